"""S3 uploads one by one against one processor batch (parallel uploads), on a real S3 server.

Run with the server of `bash scripts/services.sh up` (source .services.env first):
    python scripts/bench_s3_batch.py [--objects 64] [--size-kib 512] [--rounds 3]
Prints objects/s for each way, interleaved rounds, and the median ratio.
"""

import argparse
import os
import statistics
import time
import uuid

from dicomflow.kernel.blobs.s3 import S3BlobStore
from dicomflow.kernel.events import Namespace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--size-kib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    store = S3BlobStore(
        endpoint=os.environ["DICOMFLOW_S3_ENDPOINT"],
        access_key=os.environ["DICOMFLOW_S3_ACCESS_KEY"],
        secret_key=os.environ["DICOMFLOW_S3_SECRET_KEY"],
        bucket_prefix=f"bench{uuid.uuid4().hex[:8]}",
    )
    data = os.urandom(args.size_kib * 1024)
    store.put(Namespace.ORIGINAL, "warm-up.dcm", data)
    rates: dict[str, list[float]] = {"one by one": [], "one batch": []}
    for round_ in range(args.rounds):
        for way, rate in rates.items():
            started = time.perf_counter()
            keys = [f"r{round_}/{way.replace(' ', '-')}/{n}.dcm" for n in range(args.objects)]
            if way == "one batch":
                with store.batch():
                    for key in keys:
                        store.put(Namespace.ORIGINAL, key, data)
            else:
                for key in keys:
                    store.put(Namespace.ORIGINAL, key, data)
            rate.append(args.objects / (time.perf_counter() - started))
    for way, rate in rates.items():
        shown = ", ".join(f"{r:.0f}" for r in rate)
        print(f"{way}: {shown} objects/s (median {statistics.median(rate):.0f})")
    ratio = statistics.median(rates["one batch"]) / statistics.median(rates["one by one"])
    print(f"one batch / one by one: {ratio:.2f}x")
    store.close()


if __name__ == "__main__":
    main()

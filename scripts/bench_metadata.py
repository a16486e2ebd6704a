"""Per-object cost of the metadata processor's parse: pydicom's path against the fast reader.

Prints the median milliseconds per object of `_read_metadata_pydicom` (the reference, measured
in the same run) and of `read_metadata` (fast reader, pydicom when it gives up) for synthetic
objects of three shapes, and the speed-up. Rounds alternate between the two so that a busy
machine slows both alike.

    nice -n 10 python scripts/bench_metadata.py [--rounds 15] [--calls 200]
"""

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset

from dicomflow.processors.metadata import (
    _read_metadata_fast,
    _read_metadata_pydicom,
    read_metadata,
)
from dicomflow.synthetic import PatientSpec, make_instance

Reader = Callable[[bytes], tuple[dict[str, Any], dict[str, Any]]]


def encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def objects() -> dict[str, bytes]:
    patient = PatientSpec()
    return {
        "CT 512x512": encode(make_instance(patient, 0, 0, 1, rows=512, columns=512)),
        "10 KB": encode(make_instance(patient, 0, 0, 1, rows=64, columns=64)),
        "multi-frame 256x256x20": encode(
            make_instance(patient, 0, 0, 1, modality="MR", rows=256, columns=256, frames=20)
        ),
    }


def per_call_ms(reader: Reader, data: bytes, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        reader(data)
    return (time.perf_counter() - start) * 1000 / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    readers: dict[str, Reader] = {"pydicom": _read_metadata_pydicom, "fast": read_metadata}
    print(f"{'object':<24} {'size':>9} {'pydicom ms':>11} {'fast ms':>8} {'speed-up':>9}")
    for name, data in objects().items():
        if _read_metadata_fast(data) is None:
            raise SystemExit(f"{name}: the fast reader gives up on it; nothing to compare")
        if read_metadata(data) != _read_metadata_pydicom(data):
            raise SystemExit(f"{name}: the two readers disagree")
        for reader in readers.values():  # warm caches
            per_call_ms(reader, data, 20)
        samples: dict[str, list[float]] = {key: [] for key in readers}
        for _ in range(args.rounds):
            for key, reader in readers.items():
                samples[key].append(per_call_ms(reader, data, args.calls))
        old, new = (statistics.median(samples[key]) for key in readers)
        print(f"{name:<24} {len(data) / 1024:>7.0f}KB {old:>11.3f} {new:>8.3f} {old / new:>8.1f}x")


if __name__ == "__main__":
    main()

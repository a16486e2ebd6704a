"""Study search on the embedded index at 1M instances, with the OS page cache warm and cold.

    python scripts/bench_index_million.py [--instances 1000000] [--rounds 25] [--keep DIR]

`dicomflow bench --million` fills its 1M archive through `dicomflow import` (about 50 minutes
here) and queries it over HTTP right after writing ~30 GB of files. This script isolates the
index: it builds the same archive (20 instances per study, 2 series of 10, one study per
patient, the bench's names, dates and accession numbers) by upserting the events the metadata
processor would publish (one real extraction per study, its instances by copying), in a few
minutes, then runs the bench's four study-level QIDO queries through `StudyIndex.search` and
the JSON rendering of the API: once with the index in the page cache, once after dropping the
page cache (root only: `/proc/sys/vm/drop_caches`), and once more warm. No HTTP.
"""

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from dicomflow.api.routes.dicomweb import DicomJSONResponse
from dicomflow.bench.data import CASES, Template, bench_uid, tree_identities
from dicomflow.bench.runner import (
    INSTANCES_PER_SERIES,
    QUERY_KINDS,
    SERIES_PER_STUDY,
    query_criteria,
    summarize_queries,
)
from dicomflow.indexer.base import SearchRequest
from dicomflow.indexer.embedded import INDEX_FILE, READER_CACHE_BYTES, EmbeddedStudyIndex
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import qido_to_query
from dicomflow.kernel.events import (
    BlobRef,
    InstanceIdentity,
    MetadataExtracted,
    Namespace,
    Source,
    SourceKind,
)
from dicomflow.kernel.uids import instance_key
from dicomflow.processors.metadata import read_metadata

RUN = 7
TARGET_P95_S = 0.030


def build(folder: Path, instances: int) -> None:
    template = Template(CASES["tiny"])
    index = EmbeddedStudyIndex(folder)
    source = Source(kind=SourceKind.IMPORT, path="/bench")
    now = datetime.now(UTC)
    per_study = SERIES_PER_STUDY * INSTANCES_PER_SERIES
    batch: list[MetadataExtracted] = []
    started = time.monotonic()
    done = 0
    for study in range(instances // per_study):
        idents = list(tree_identities(study, 1, SERIES_PER_STUDY, INSTANCES_PER_SERIES))
        dicom_json, fields = read_metadata(template.render(RUN, idents[0]))
        study_uid = bench_uid(1, RUN, study)
        for ident in idents:
            series, sop = bench_uid(2, RUN, ident.series), bench_uid(3, RUN, ident.instance)
            own_json = {
                **dicom_json,
                "0020000E": {"vr": "UI", "Value": [series]},
                "00080018": {"vr": "UI", "Value": [sop]},
            }
            own_fields = {**fields, "SeriesInstanceUID": series, "SOPInstanceUID": sop}
            identity = InstanceIdentity(
                study_instance_uid=study_uid,
                series_instance_uid=series,
                sop_instance_uid=sop,
                sop_class_uid=fields["SOPClassUID"],
                transfer_syntax_uid="1.2.840.10008.1.2.1",
            )
            key = instance_key(study_uid, series, sop)
            blob = BlobRef(
                namespace=Namespace.ORIGINAL, key=key, size=template.size, sha256="0" * 64
            )
            batch.append(
                MetadataExtracted(
                    identity=identity,
                    namespace=Namespace.ORIGINAL,
                    blob=blob,
                    source=source,
                    received_at=now,
                    dicom_json=own_json,
                    fields=own_fields,
                )
            )
        if len(batch) >= 500:
            index.upsert(batch)
            done += len(batch)
            batch = []
            if done % 100_000 == 0:
                rate = done / (time.monotonic() - started)
                print(f"  {done:,} instances indexed ({rate:,.0f}/s)", flush=True)
    if batch:
        index.upsert(batch)
        done += len(batch)
    index.close()
    print(f"built {done:,} instances in {time.monotonic() - started:.0f} s", flush=True)


def drop_page_cache() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def query(folder: Path, rounds: int, label: str) -> float:
    index = EmbeddedStudyIndex(folder, cache_bytes=READER_CACHE_BYTES)  # as the API opens it
    studies = index.counts(Namespace.ORIGINAL)[Level.STUDY]
    rng = random.Random(f"{label}{studies}")
    plan = [(kind, rng.randrange(studies)) for _ in range(rounds) for kind in QUERY_KINDS]
    samples: dict[str, list[float]] = {kind: [] for kind in QUERY_KINDS}
    matches: dict[str, list[int]] = {kind: [] for kind in QUERY_KINDS}
    for kind, study in plan:
        criteria = list(query_criteria(kind, study).items())
        request = SearchRequest(
            namespace=Namespace.ORIGINAL,
            level=Level.STUDY,
            query=qido_to_query(criteria, Level.STUDY),
            limit=1000,
        )
        started = time.perf_counter()
        result = index.search(request)
        DicomJSONResponse(result.results)
        samples[kind].append(time.perf_counter() - started)
        matches[kind].append(result.total)
    index.close()

    summary = summarize_queries(samples)  # the bench's own percentiles, per kind and in all

    def p50_p95(key: str) -> str:
        return f"{summary[key]['p50_s'] * 1000:.1f} / {summary[key]['p95_s'] * 1000:.1f} ms"

    print(f"{label}: all {p50_p95('all')} (p50 / p95)")
    for kind in samples:
        print(f"    {kind:<20} {p50_p95(kind)}, {statistics.median(matches[kind]):.0f} studies")
    return float(summary["all"]["p95_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=25, help="queries per kind and pass")
    parser.add_argument("--keep", type=Path, help="build in (or reuse) this folder, keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="dicomflow-index-"))
    try:
        if not (folder / INDEX_FILE).exists():
            build(folder, args.instances)
        warm = query(folder, args.rounds, "warm page cache")
        cold = query(folder, args.rounds, "cold page cache") if drop_page_cache() else None
        if cold is None:
            print("cold page cache: not measured (dropping the page cache needs root)")
        query(folder, args.rounds, "warm again")
        verdict = "met" if max(warm, cold or 0.0) < TARGET_P95_S else "missed"
        print(f"target p95 < {TARGET_P95_S * 1000:.0f} ms (warm and cold): {verdict}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

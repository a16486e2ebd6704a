"""Benchmark of the search indices: bulk upsert rate and study-level search latency.

    python tests/indexer/bench_index.py [--instances 10000] [--batch 500]
        [--elasticsearch http://127.0.0.1:9200] [--rounds 30]

Synthetic instances (make_instance, 4x4 pixels, real metadata extraction), 2 studies per
patient, 2 series per study, 25 instances per series, delivered in batches in study order (as
one partition of the metadata topic delivers them). The embedded index is the reference,
measured in the same run; Elasticsearch is measured with each refresh policy: ``true`` (a
refresh at the end of each upsert: searchable when upsert returns), ``wait_for`` (the last
bulk waits for the periodic refresh) and ``false`` (visible within the 1 s refresh interval).
Elasticsearch indices get a prefix of their own and are deleted afterwards.
"""

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from index_archive import event_of

from dicomflow.indexer.base import SearchRequest, StudyIndex
from dicomflow.indexer.embedded import EmbeddedStudyIndex
from dicomflow.indexer.levels import Level
from dicomflow.indexer.query import parse_lucene, qido_to_query
from dicomflow.kernel.events import MetadataExtracted, Namespace
from dicomflow.synthetic import iter_study_tree

STUDIES, SERIES, INSTANCES = 2, 2, 25
QUERIES = {
    "all (default order)": parse_lucene(""),
    "PatientName:DOE*": parse_lucene("PatientName:DOE*"),
    "PatientID:PID0007": parse_lucene("PatientID:PID0007"),
    "Modality:CT AND StudyDate:[20240101 TO 20240630]": parse_lucene(
        "Modality:CT AND StudyDate:[20240101 TO 20240630]"
    ),
    "free text: chest john*": parse_lucene("chest john*"),
    "QIDO ModalitiesInStudy=MR": qido_to_query({"ModalitiesInStudy": "MR"}, Level.STUDY),
}


def make_events(count: int) -> list[MetadataExtracted]:
    patients = max(1, count // (STUDIES * SERIES * INSTANCES))
    tree = iter_study_tree(
        patients=patients,
        studies_per_patient=STUDIES,
        series_per_study=SERIES,
        instances_per_series=INSTANCES,
        rows=4,
        columns=4,
    )
    return [event_of(ds) for ds in tree][:count]


def load(index: StudyIndex, events: list[MetadataExtracted], batch: int) -> float:
    """Seconds to upsert `events` in batches."""
    start = time.perf_counter()
    for offset in range(0, len(events), batch):
        index.upsert(events[offset : offset + batch])
    return time.perf_counter() - start


def latencies(index: StudyIndex, rounds: int) -> list[float]:
    """Milliseconds of each study-level search (every query, `rounds` times)."""
    samples = []
    for _ in range(rounds):
        for query in QUERIES.values():
            request = SearchRequest(namespace=Namespace.ORIGINAL, level=Level.STUDY, query=query)
            start = time.perf_counter()
            index.search(request)
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def measure(
    name: str,
    opener: Callable[[], StudyIndex],
    events: list[MetadataExtracted],
    args: argparse.Namespace,
    *,
    search: bool = True,
    expected: dict[Level, int] | None = None,
) -> tuple[dict[str, float], dict[Level, int]]:
    index = opener()
    try:
        seconds = load(index, events, args.batch)
        counts = index.counts(Namespace.ORIGINAL)
        settled = time.perf_counter()
        while expected and counts != expected and time.perf_counter() - settled < 30:
            time.sleep(0.05)  # refresh=false: until the periodic refresh shows everything
            counts = index.counts(Namespace.ORIGINAL)
        visible = time.perf_counter() - settled
        result = {"seconds": seconds, "rate": len(events) / seconds, "visible": visible}
        if search:
            samples = latencies(index, args.rounds)
            result["p50"] = percentile(samples, 50)
            result["p95"] = percentile(samples, 95)
        print(
            f"{name:<28} {result['rate']:>9.0f} inst/s  ({seconds:6.1f} s)"
            + (
                f"  search p50 {result['p50']:6.1f} ms  p95 {result['p95']:6.1f} ms"
                if search
                else ""
            )
            + (f"  all visible {visible:.2f} s after" if visible > 0.01 else "")
            + f"  counts {dict((k.value, v) for k, v in counts.items())}",
            flush=True,
        )
        return result, counts
    finally:
        uninstall = getattr(index, "uninstall", None)
        if uninstall is not None:
            uninstall()
        index.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--elasticsearch", default="", help="URL; empty: embedded only")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, medians reported")
    args = parser.parse_args()

    start = time.perf_counter()
    events = make_events(args.instances)
    print(
        f"{len(events)} synthetic instances generated in {time.perf_counter() - start:.1f} s; "
        f"batches of {args.batch}; {len(QUERIES)} study-level queries x {args.rounds}",
        flush=True,
    )
    runs: dict[str, list[dict[str, float]]] = {}
    expected: dict[Level, int] | None = None
    for _ in range(args.repeat):  # interleaved, so that a busy moment hits all alike
        with tempfile.TemporaryDirectory() as tmp:
            result, expected = measure(
                "embedded (SQLite)", lambda: EmbeddedStudyIndex(Path(tmp) / "index"), events, args
            )
        runs.setdefault("embedded", []).append(result)
        if not args.elasticsearch:
            continue
        from dicomflow.indexer.elasticsearch import ElasticsearchStudyIndex

        for refresh in (True, "wait_for", False):
            prefix = f"dicomflow-bench-{uuid.uuid4().hex[:8]}"
            result, _ = measure(
                f"elasticsearch refresh={str(refresh).lower()}",
                lambda prefix=prefix, refresh=refresh: ElasticsearchStudyIndex(  # type: ignore[misc]
                    args.elasticsearch, prefix=prefix, refresh=refresh
                ),
                events,
                args,
                search=refresh is True,
                expected=expected,
            )
            runs.setdefault(f"es:{refresh}", []).append(result)
    results = {
        name: {key: statistics.median(run[key] for run in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    print(f"medians of {args.repeat} run(s):")
    for name, result in results.items():
        print(f"  {name:<16} " + "  ".join(f"{k} {v:.1f}" for k, v in result.items()))
    if args.elasticsearch:
        reference = results["embedded"]
        es = results["es:True"]
        print(
            f"ratios: ES refresh=true / embedded: upsert {es['rate'] / reference['rate']:.2f}x, "
            f"search p50 {es['p50'] / reference['p50']:.2f}x, "
            f"p95 {es['p95'] / reference['p95']:.2f}x; "
            f"ES refresh=false / refresh=true upsert "
            f"{results['es:False']['rate'] / es['rate']:.2f}x, "
            f"wait_for / true {results['es:wait_for']['rate'] / es['rate']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

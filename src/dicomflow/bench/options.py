"""The command line of `dicomflow bench` and what it resolves to (quick or full run)."""

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from dicomflow.bench.data import CASES

PHASES = ("ingest", "searchable", "query", "import", "ui", "memory")
RECEIVERS = ("dicomflow", "dicomflow-ingest", "dcmtk", "orthanc")
MILLION = 1_000_000
T = TypeVar("T")


@dataclass
class Options:
    phases: list[str]
    quick: bool
    cases: list[str]
    associations: list[int]
    instances: int  # per ingest run, for the 0.5 MB CT case (others scaled by size)
    repeats: int
    nagle: bool
    nagle_instances: int
    nagle_repeats: int
    receivers: list[str]
    sizes: list[int]
    queries: int
    ui_rounds: int
    sustained_seconds: float
    sustained_case: str
    overrides: dict[str, str]
    archive_processors: str
    out: Path
    work: Path | None
    keep: bool
    label: str
    argv: list[str] = field(default_factory=list)

    def count_for(self, case: str) -> int:
        """Objects per ingest run: about the same number of bytes is not the aim, the same
        wall time roughly is: small objects go faster, so more of them."""
        if case == "tiny":
            return self.instances * 2
        if case == "mf":
            return max(10, self.instances // 8)
        return self.instances

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["work"] = str(self.work) if self.work else None
        return data


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _ints(value: str) -> list[int]:
    try:
        return [int(item.replace("_", "").replace("k", "000")) for item in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, not {value!r}"
        ) from None


def _choices(allowed: tuple[str, ...] | list[str], what: str) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        items = _csv(value)
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}"
            )
        return items

    return parse


def _override(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a dicomflow setting), not {value!r}")
    return key.strip().lower().removeprefix("dicomflow_"), val.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomflow bench",
        description="Ingest and search figures of dicomflow side by side with DCMTK storescp "
        "and Orthanc (found if installed, never installed by the bench), in one run: a table "
        "with the ratios and the targets of issue 6, and a JSON file to compare runs.",
    )
    parser.add_argument(
        "--phases",
        type=_choices(PHASES, "phase"),
        default=list(PHASES),
        help=f"comma-separated phases to run (default: all of {','.join(PHASES)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run (two to four minutes: fewer objects, runs and sizes)",
    )
    parser.add_argument(
        "--cases",
        type=_choices(list(CASES), "case"),
        help="ingest object kinds: ct (0.5 MB), tiny (10 KB), mf (4 MB multi-frame) "
        "(default: all; quick: ct,tiny)",
    )
    parser.add_argument(
        "--associations", type=_ints, help="parallel associations to measure (default: 1,4)"
    )
    parser.add_argument(
        "--instances",
        type=int,
        help="objects per ingest run for the CT case (tiny: twice, multi-frame: an eighth) "
        "(default: 500; quick: 100)",
    )
    parser.add_argument(
        "--repeats", type=int, help="runs per figure, the median is kept (5; quick 2)"
    )
    parser.add_argument(
        "--no-nagle",
        dest="nagle",
        action="store_false",
        help="skip the runs with Nagle on in storescu (no TCP_NODELAY=1)",
    )
    parser.add_argument(
        "--nagle-instances", type=int, help="objects per Nagle run (default 60; quick 20)"
    )
    parser.add_argument(
        "--receivers",
        type=_choices(RECEIVERS, "receiver"),
        help="receivers of the ingest phase: dicomflow (`dicomflow serve`, every role), "
        "dicomflow-ingest (the ingest role alone: the acknowledgement path without the "
        "pipeline competing for the cores), dcmtk, orthanc (default: all that are "
        "installed; quick: all but dicomflow-ingest)",
    )
    parser.add_argument(
        "--sizes",
        type=_ints,
        help="index sizes (instances) of the query phase (default 10000,100000; quick 1000)",
    )
    parser.add_argument(
        "--million", action="store_true", help="add the 1,000,000-instance step to --sizes"
    )
    parser.add_argument("--queries", type=int, help="queries per kind and size (25; quick 10)")
    parser.add_argument(
        "--sustained-seconds",
        type=float,
        help="duration of the full-rate ingest of the searchable phase (60; quick 8)",
    )
    parser.add_argument(
        "--sustained-case",
        choices=list(CASES),
        default="ct",
        help="object kind of the searchable phase (default ct)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dicomflow setting for the servers the bench starts (e.g. dicom_workers=2)",
    )
    parser.add_argument(
        "--archive-processors",
        default="storage,metadata,index",
        help="processors of the server filled by the import and query phases: the metadata "
        "path by default (the import target is set on it); 'all' adds de-identification",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON results file (default bench-results/bench-YYYYmmdd-HHMMSS.json)",
    )
    parser.add_argument(
        "--work", type=Path, help="scratch folder for data and servers (default: a temp folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--label", default="", help="a note stored with the results")
    return parser


def _given(value: T | None, default: T) -> T:
    """An option's value if given (0 included), else the default."""
    return default if value is None else value


def parse_options(argv: list[str]) -> Options:
    args = build_parser().parse_args(argv)
    quick: bool = args.quick
    sizes: list[int] = args.sizes or ([1_000] if quick else [10_000, 100_000])
    if args.million and MILLION not in sizes:
        sizes.append(MILLION)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    options = Options(
        phases=args.phases,
        quick=quick,
        cases=args.cases or (["ct", "tiny"] if quick else ["ct", "tiny", "mf"]),
        associations=args.associations or [1, 4],
        instances=_given(args.instances, 100 if quick else 500),
        repeats=_given(args.repeats, 2 if quick else 5),
        nagle=args.nagle,
        nagle_instances=_given(args.nagle_instances, 20 if quick else 60),
        nagle_repeats=1 if quick else 3,
        receivers=args.receivers
        or [r for r in RECEIVERS if not (quick and r == "dicomflow-ingest")],
        sizes=sorted(sizes),
        queries=_given(args.queries, 10 if quick else 25),
        ui_rounds=2 if quick else 5,
        sustained_seconds=_given(args.sustained_seconds, 8.0 if quick else 60.0),
        sustained_case=args.sustained_case,
        overrides=dict(args.overrides),
        archive_processors="" if args.archive_processors == "all" else args.archive_processors,
        out=args.out or Path("bench-results") / f"bench-{stamp}.json",
        work=args.work,
        keep=args.keep,
        label=args.label,
        argv=list(argv),
    )
    for name, value in (("--instances", options.instances), ("--repeats", options.repeats)):
        if value < 1:
            raise SystemExit(f"dicomflow bench: {name} must be at least 1")
    if any(a < 1 for a in options.associations):
        raise SystemExit("dicomflow bench: --associations must be at least 1")
    if options.phases == ["memory"]:
        raise SystemExit(
            "dicomflow bench: memory is measured during the other phases; add one (e.g. "
            "--phases ingest,memory)"
        )
    return options

"""The bench's command line: defaults of the full and quick runs, validation."""

from pathlib import Path

import pytest

from dicomflow.bench.options import MILLION, PHASES, parse_options


def test_full_run_defaults() -> None:
    options = parse_options([])
    assert options.phases == list(PHASES)
    assert options.cases == ["ct", "tiny", "mf"]
    assert options.associations == [1, 4]
    assert options.repeats == 5
    assert options.sizes == [10_000, 100_000]
    assert "dicomflow-ingest" in options.receivers
    assert options.out.parent == Path("bench-results")
    assert options.out.suffix == ".json"


def test_quick_run_is_smaller() -> None:
    quick = parse_options(["--quick"])
    full = parse_options([])
    assert quick.instances < full.instances
    assert quick.repeats < full.repeats
    assert max(quick.sizes) < max(full.sizes)
    assert quick.sustained_seconds < full.sustained_seconds
    assert quick.cases == ["ct", "tiny"]


def test_explicit_values_and_million() -> None:
    options = parse_options(
        [
            "--phases",
            "ingest,memory",
            "--cases",
            "tiny",
            "--associations",
            "1,2",
            "--sizes",
            "10k,20_000",
            "--million",
            "--set",
            "DICOMFLOW_DICOM_WORKERS=2",
            "--set",
            "log_level=DEBUG",
            "--out",
            "x.json",
        ]
    )
    assert options.phases == ["ingest", "memory"]
    assert options.cases == ["tiny"]
    assert options.associations == [1, 2]
    assert options.sizes == [10_000, 20_000, MILLION]
    assert options.overrides == {"dicom_workers": "2", "log_level": "DEBUG"}
    assert options.out == Path("x.json")


def test_scaled_counts_per_case() -> None:
    options = parse_options(["--instances", "80"])
    assert options.count_for("ct") == 80
    assert options.count_for("tiny") == 160
    assert options.count_for("mf") == 10


@pytest.mark.parametrize(
    "argv",
    [
        ["--phases", "ingest,nonsense"],
        ["--cases", "huge"],
        ["--sizes", "ten"],
        ["--set", "novalue"],
        ["--phases", "memory"],
        ["--repeats", "0"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_options(argv)


def test_options_serialise_to_json_types() -> None:
    data = parse_options(["--quick"]).to_json()
    assert isinstance(data["out"], str)
    assert data["quick"] is True

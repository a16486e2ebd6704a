"""Percentiles, ratios and target verdicts of the bench (pure functions, no timing)."""

import pytest

from dicomflow.bench.stats import (
    Status,
    Target,
    fmt_ratio,
    fmt_seconds,
    latency_summary,
    median,
    percentile,
    ratio,
)


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert median([5.0]) == 5.0


def test_percentile_of_nothing_is_none_and_bad_ranks_are_refused() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_latency_summary() -> None:
    summary = latency_summary([0.1 * n for n in range(1, 101)])
    assert summary["count"] == 100
    assert summary["p50_s"] == pytest.approx(5.05)
    assert summary["p99_s"] == pytest.approx(9.901)
    assert summary["max_s"] == pytest.approx(10.0)
    assert latency_summary([])["p95_s"] is None


def test_ratio_needs_both_figures() -> None:
    assert ratio(300.0, 200.0) == 1.5
    assert ratio(None, 200.0) is None
    assert ratio(300.0, None) is None
    assert ratio(300.0, 0.0) is None


@pytest.mark.parametrize(
    ("value", "at_least", "status", "shortfall"),
    [
        (1.6, True, Status.MET, 0.0),
        (1.5, True, Status.MET, 0.0),
        (0.75, True, Status.MISSED, 0.5),
        (0.5, False, Status.MET, 0.0),
        (1.5, False, Status.MISSED, 0.5),
        (None, True, Status.NOT_MEASURED, None),
    ],
)
def test_target_verdicts(
    value: float | None, at_least: bool, status: Status, shortfall: float | None
) -> None:
    target = Target("k", "d", value, 1.5 if at_least else 1.0, at_least)
    assert target.status is status
    if shortfall is None:
        assert target.shortfall is None
    else:
        assert target.shortfall == pytest.approx(shortfall)
    assert target.to_json()["status"] == status.value


def test_formats() -> None:
    assert fmt_ratio(1.234) == "1.23x"
    assert fmt_ratio(None) == "-"
    assert fmt_seconds(0.0123) == "12.3 ms"
    assert fmt_seconds(2.5) == "2.50 s"

"""Figures from samples: medians, percentiles, ratios, and the targets of issue 6."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear-interpolated percentile (like numpy's default); None without samples."""
    if not values:
        return None
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be between 0 and 100, not {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "count": len(seconds),
        "p50_s": percentile(seconds, 50),
        "p95_s": percentile(seconds, 95),
        "p99_s": percentile(seconds, 99),
        "max_s": max(seconds) if seconds else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


class Status(StrEnum):
    MET = "met"
    MISSED = "missed"
    NOT_MEASURED = "n/a"


@dataclass(frozen=True)
class Target:
    """One target of the issue, evaluated on one measured value."""

    key: str
    description: str
    value: float | None
    threshold: float
    at_least: bool  # True: value >= threshold; False: value < threshold
    note: str = ""

    @property
    def status(self) -> Status:
        if self.value is None:
            return Status.NOT_MEASURED
        ok = self.value >= self.threshold if self.at_least else self.value < self.threshold
        return Status.MET if ok else Status.MISSED

    @property
    def shortfall(self) -> float | None:
        """How far from the target, as a fraction of the threshold (0 when met)."""
        if self.value is None:
            return None
        if self.status is Status.MET:
            return 0.0
        return abs(self.threshold - self.value) / self.threshold

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "description": self.description,
            "value": self.value,
            "threshold": self.threshold,
            "at_least": self.at_least,
            "status": self.status.value,
            "shortfall": self.shortfall,
            "note": self.note,
        }


def fmt_rate(value: float | None, unit: str = "/s") -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.1f}{unit}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:,.0f} MiB"

"""Tiny server-side charts: the geometry of column, bar and line charts for inline SVG.

The templates draw the shapes (``templates/_charts.html``), so that every label goes through
Jinja's escaping; each chart also lists its data as a table for screen readers.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    """A chart ready to draw: its size, shapes, axis ticks and the data it shows."""

    title: str
    kind: str  # "columns", "bars" or "line"
    width: int
    height: int
    bars: list[Bar] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    labels: list[Tick] = field(default_factory=list)
    points: str = ""
    data: list[tuple[str, int]] = field(default_factory=list)
    unit: str = ""

    @property
    def empty(self) -> bool:
        return not any(value for _, value in self.data)


def nice_max(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return int(step * power)
    return int(10 * power)  # pragma: no cover - the loop returns


def _ticks(top: int, plot_top: float, plot_height: float) -> list[Tick]:
    """Value axis ticks at 0, the top and, when it is a whole number, half the top."""
    fractions = (0.0, 0.5, 1.0) if top % 2 == 0 else (0.0, 1.0)
    return [
        Tick(plot_top + plot_height * (1 - fraction), f"{round(top * fraction):,}")
        for fraction in fractions
    ]


def columns(
    title: str, data: Sequence[tuple[str, int]], *, width: int = 1200, height: int = 200
) -> Chart:
    """Vertical columns (one per label, e.g. one per day), with a value axis."""
    left, right, top, bottom = 44.0, 8.0, 8.0, 34.0
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = nice_max(max((v for _, v in data), default=0))
    slot = plot_w / max(len(data), 1)
    bars: list[Bar] = []
    labels: list[Tick] = []
    every = max(1, math.ceil(len(data) / 10))
    for i, (label, value) in enumerate(data):
        h = plot_h * value / peak
        bars.append(
            Bar(label, value, left + i * slot + slot * 0.1, top + plot_h - h, slot * 0.8, h)
        )
        if i % every == 0 or i == len(data) - 1:
            labels.append(Tick(left + i * slot + slot / 2, label))
    return Chart(
        title,
        "columns",
        width,
        height,
        bars=bars,
        ticks=_ticks(peak, top, plot_h),
        labels=labels,
        data=list(data),
    )


def bars(title: str, data: Sequence[tuple[str, int]], *, width: int = 420) -> Chart:
    """Horizontal bars, largest first as given (e.g. modality mix, top senders)."""
    row, label_w, value_w, top = 22.0, 96.0, 56.0, 4.0
    plot_w = width - label_w - value_w
    peak = max((v for _, v in data), default=0) or 1
    shapes = [
        Bar(label, value, label_w, top + i * row + 3, max(plot_w * value / peak, 1.0), row - 6)
        for i, (label, value) in enumerate(data)
    ]
    height = int(top * 2 + row * max(len(data), 1))
    return Chart(title, "bars", width, height, bars=shapes, data=list(data))


def line(
    title: str,
    data: Sequence[tuple[str, int]],
    *,
    width: int = 1200,
    height: int = 140,
    unit: str = "",
) -> Chart:
    """A line over time (e.g. objects received per 10 s), with a value axis."""
    left, right, top, bottom = 44.0, 8.0, 8.0, 22.0
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = nice_max(max((v for _, v in data), default=0))
    step = plot_w / max(len(data) - 1, 1)
    points = " ".join(
        f"{left + i * step:.1f},{top + plot_h * (1 - value / peak):.1f}"
        for i, (_, value) in enumerate(data)
    )
    labels = [Tick(left, data[0][0]), Tick(left + plot_w, data[-1][0])] if data else []
    return Chart(
        title,
        "line",
        width,
        height,
        ticks=_ticks(peak, top, plot_h),
        labels=labels,
        points=points,
        data=list(data),
        unit=unit,
    )

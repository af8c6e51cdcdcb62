"""Bar charts drawn on the server: the geometry of an inline SVG (templates/_charts.html
draws it), with every number also given as text for the table beside it.

No script and no style attribute: the page's Content-Security-Policy allows neither
inline; the bars are coloured by class from the stylesheet.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence

import attrs

from atollon_mail.store.traffic import KINDS, SendRate, Traffic

# The drawing's own units (the SVG scales to the page's width).
WIDTH = 720
HEIGHT = 220
LEFT = 44  # room for the value axis' numbers
BOTTOM = 24  # room for the bucket labels
TOP = 10
RIGHT = 8
X_LABELS = 8  # at most this many bucket labels under the bars


@attrs.frozen
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str
    value: int
    label: str  # the bucket's label in full, for the bar's tooltip


@attrs.frozen
class Tick:
    y: float
    value: int


@attrs.frozen
class XLabel:
    x: float
    text: str


@attrs.frozen
class Row:
    """One bucket as a table row: its label and each series' value, in series order."""

    label: str
    values: tuple[int, ...]


@attrs.frozen
class Chart:
    id: str
    title: str
    description: str
    series: tuple[str, ...]
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    x_labels: tuple[XLabel, ...]
    rows: tuple[Row, ...]
    empty: bool
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    plot_bottom: float = HEIGHT - BOTTOM


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... not below value (1 for nothing)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover (the loop always ends at 10)


def bar_chart(
    chart_id: str,
    title: str,
    description: str,
    buckets: Sequence,
    series: Sequence[str],
    label: Callable[[object], str],
    short_label: Callable[[object], str],
) -> Chart:
    """Grouped bars: per bucket, one bar per series (each an attribute of the bucket)."""
    values = [[int(getattr(bucket, name)) for name in series] for bucket in buckets]
    top = nice_ceiling(max((value for row in values for value in row), default=0))
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(buckets), 1)
    gap = slot * 0.2 if len(series) > 1 or slot > 4 else 0
    bar_width = (slot - gap) / len(series)
    bars = []
    for index, (bucket, row) in enumerate(zip(buckets, values, strict=True)):
        for number, (name, value) in enumerate(zip(series, row, strict=True)):
            height = plot_height * value / top
            bars.append(
                Bar(
                    x=round(LEFT + index * slot + gap / 2 + number * bar_width, 2),
                    y=round(TOP + plot_height - height, 2),
                    width=round(bar_width, 2),
                    height=round(height, 2),
                    series=name,
                    value=value,
                    label=label(bucket),
                )
            )
    steps = next(count for count in (5, 4, 2, 1) if top % count == 0)
    ticks = tuple(
        Tick(y=round(TOP + plot_height - plot_height * n / steps, 2), value=round(top * n / steps))
        for n in range(steps + 1)
    )
    every = max(1, math.ceil(len(buckets) / X_LABELS))
    x_labels = tuple(
        XLabel(x=round(LEFT + index * slot + slot / 2, 2), text=short_label(bucket))
        for index, bucket in enumerate(buckets)
        if index % every == 0
    )
    rows = tuple(
        Row(label(bucket), tuple(row)) for bucket, row in zip(buckets, values, strict=True)
    )
    return Chart(
        id=chart_id,
        title=title,
        description=description,
        series=tuple(series),
        bars=tuple(bars),
        ticks=ticks,
        x_labels=x_labels,
        rows=rows,
        empty=not any(value for row in values for value in row),
    )


# --- the charts of the pages -------------------------------------------------------------


def _span(start: datetime.datetime, width: datetime.timedelta) -> str:
    """A bucket in full: its day, and its times when shorter than a day."""
    if width >= datetime.timedelta(days=1):
        return f"{start:%Y-%m-%d} (UTC)"
    return f"{start:%Y-%m-%d %H:%M}\u2013{start + width:%H:%M} UTC"


def traffic_charts(traffic: Traffic) -> tuple[Chart, Chart]:
    """The dashboard's two charts: the last 24 hours per hour, the last 30 days per day."""
    hour = datetime.timedelta(hours=1)
    hours = bar_chart(
        "traffic-hours",
        "Mail in the last 24 hours, per hour (UTC)",
        "Messages received, recipients sent to and bounced, and messages filed as junk, "
        f"in each hour from {traffic.hours[0].start:%Y-%m-%d %H:%M} to "
        f"{traffic.hours[-1].start + hour:%Y-%m-%d %H:%M} UTC.",
        traffic.hours,
        KINDS,
        lambda bucket: _span(bucket.start, hour),
        lambda bucket: f"{bucket.start:%H}h",
    )
    days = bar_chart(
        "traffic-days",
        "Mail in the last 30 days, per day (UTC)",
        "Messages received, recipients sent to and bounced, and messages filed as junk, "
        f"on each day from {traffic.days[0].start:%Y-%m-%d} to "
        f"{traffic.days[-1].start:%Y-%m-%d} (UTC).",
        traffic.days,
        KINDS,
        lambda bucket: _span(bucket.start, datetime.timedelta(days=1)),
        lambda bucket: f"{bucket.start:%m-%d}",
    )
    return hours, days


_RATE_UNITS = {
    "minute": (datetime.timedelta(minutes=1), "%H:%M"),
    "hour": (datetime.timedelta(hours=1), "%d %Hh"),
    "day": (datetime.timedelta(days=1), "%m-%d"),
}


def send_rate_chart(rate: SendRate) -> Chart:
    """A campaign's recipients sent per minute, hour or day."""
    width, short = _RATE_UNITS[rate.unit]
    first = rate.buckets[0].start if rate.buckets else None
    last = rate.buckets[-1].start if rate.buckets else None
    description = (
        f"Recipients sent to per {rate.unit}, from {first:%Y-%m-%d %H:%M} to "
        f"{last + width:%Y-%m-%d %H:%M} UTC; {rate.total} in all, at most {rate.peak} "
        f"in one {rate.unit}."
        if rate.buckets
        else "Nothing sent yet."
    )
    return bar_chart(
        "send-rate",
        f"Sent per {rate.unit} (UTC)",
        description,
        rate.buckets,
        ("sent",),
        lambda bucket: _span(bucket.start, width),
        lambda bucket: bucket.start.strftime(short),
    )

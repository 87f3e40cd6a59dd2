"""Charts drawn on the server as inline SVG: no script, no CDN, nothing fetched.

Horizontal bars, one row per category, its label beside it and its value after the bar; a
stacked variant for a category split by series (month by urgency, service by outcome). In
Arabic the chart is mirrored (bars grow leftwards from the right) and labels carry
direction="rtl", so the browser shapes them and orders them right to left. A count hidden by
small-cell suppression draws no bar and is written "<5". Presentation attributes only (fill,
font-size...): the pages' CSP allows no inline style. Every chart is an image with a title and a
description pointing at the table with the same figures, which screen readers use.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH = 760
LABEL_WIDTH = 280
LABEL_CHARS = 34  # longer labels are cut with "…" (the table below has them whole)
VALUE_WIDTH = 60
ROW = 30
BAR = 20
TOP = 8
INK = "#1d2330"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', 'Noto Naskh Arabic', 'DejaVu Sans', Arial, sans-serif"
# Dark enough for white text and for a thin bar on white (WCAG 3:1 for graphics at least).
PALETTE = ("#0b5c63", "#b35c00", "#a3261b", "#4b3f8f", "#2f6b1f", "#6b4e16", "#5a6272", "#8a1c5c")


@dataclass(frozen=True)
class Bar:
    label: str
    value: int | None  # None: hidden (small-cell suppression) or nothing to draw
    shown: str  # the text written after the bar: "12", "<5", "3.5 h"


@dataclass(frozen=True)
class Segment:
    series: int  # index into the chart's series
    value: int | None


def _x(x: float, rtl: bool) -> float:
    return WIDTH - x if rtl else x


def _text(x: float, y: float, text: str, rtl: bool, anchor: str, bold: bool = False, fill: str = INK, number: bool = False) -> str:
    # `anchor` is logical ("start" or "end" of the reading direction), as SVG reads text-anchor
    # once direction="rtl" is set: only the x position is mirrored. A number ("12", "<5", "3.5")
    # stays left to right, or "<5" would show as "5>": its anchor is then the physical one.
    weight = ' font-weight="700"' if bold else ""
    # Set on every text of an Arabic chart: SVG inherits `direction` from the page.
    direction = (' direction="ltr"' if number else ' direction="rtl"') if rtl else ""
    if rtl and number:
        anchor = {"start": "end", "end": "start"}.get(anchor, anchor)
    return f'<text x="{_x(x, rtl):.1f}" y="{y:.1f}" text-anchor="{anchor}"{direction}{weight} fill="{fill}">{escape(text)}</text>'


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1].rstrip() + "…"


def _open(chart_id: str, title: str, description: str, height: float) -> str:
    return (
        f'<svg class="chart" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'width="100%" preserveAspectRatio="xMinYMin meet" font-family="{escape(FONT)}" font-size="14" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(description)}</desc>'
    )


def _rect(x: float, y: float, width: float, fill: str, rtl: bool) -> str:
    left = WIDTH - x - width if rtl else x
    return f'<rect x="{left:.1f}" y="{y:.1f}" width="{width:.1f}" height="{BAR}" rx="2" fill="{fill}"/>'


def bar_chart(chart_id: str, title: str, description: str, bars: list[Bar], rtl: bool) -> Markup:
    area = WIDTH - LABEL_WIDTH - VALUE_WIDTH - 16
    top = max([b.value or 0 for b in bars] + [1])
    height = TOP * 2 + ROW * len(bars)
    parts = [_open(chart_id, title, description, height)]
    for i, b in enumerate(bars):
        y = TOP + i * ROW
        mid = y + BAR / 2 + 5
        parts.append(_text(LABEL_WIDTH - 8, mid, _label(b.label), rtl, "end"))
        width = area * (b.value or 0) / top
        if width:
            parts.append(_rect(LABEL_WIDTH, y, max(width, 2), PALETTE[0], rtl))
        parts.append(_text(LABEL_WIDTH + width + 6, mid, b.shown, rtl, "start", bold=True, number=True))
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_chart(
    chart_id: str, title: str, description: str, rows: list[tuple[str, list[Segment]]], series: list[str], rtl: bool
) -> Markup:
    """One bar per row, its segments side by side in series order; a legend of the series below."""
    area = WIDTH - LABEL_WIDTH - 16
    top = max([sum(s.value or 0 for s in segments) for _, segments in rows] + [1])
    legend_rows = (len(series) + 2) // 3
    height = TOP * 2 + ROW * len(rows) + 12 + legend_rows * 24
    parts = [_open(chart_id, title, description, height)]
    for i, (label, segments) in enumerate(rows):
        y = TOP + i * ROW
        parts.append(_text(LABEL_WIDTH - 8, y + BAR / 2 + 5, _label(label), rtl, "end"))
        x = float(LABEL_WIDTH)
        for segment in segments:
            width = area * (segment.value or 0) / top
            if width:
                parts.append(_rect(x, y, width, PALETTE[segment.series % len(PALETTE)], rtl))
                x += width
    y = TOP + ROW * len(rows) + 12
    column = (WIDTH - 16) / 3
    for n, name in enumerate(series):
        cx, cy = 8 + (n % 3) * column, y + (n // 3) * 24
        left = WIDTH - cx - 14 if rtl else cx
        parts.append(f'<rect x="{left:.1f}" y="{cy:.1f}" width="14" height="14" rx="2" fill="{PALETTE[n % len(PALETTE)]}"/>')
        parts.append(_text(cx + 20, cy + 12, name, rtl, "start"))
    parts.append("</svg>")
    return Markup("".join(parts))

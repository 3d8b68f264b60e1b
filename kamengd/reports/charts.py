"""Charts for the staff panel's reports, drawn on the server as inline SVG.

Each function takes plain data (labels and integer values, such as cents or
order counts) and returns one `<svg>` element as `Markup`, so a template writes
`{{ chart }}`; no JavaScript and no build step. The panel's Content-Security-Policy
(`style-src 'self'`) refuses inline styles, so the SVG has no `style` attribute
and no `<style>` element: text and axes are `currentColor`, and every colour
comes from class names styled in panel.css (`.chart …`, `heat-0`..`heat-4`).
Without the stylesheet a chart is still legible, in the text colour.

Nothing depends on colour alone: each bar and cell carries a `<title>` tooltip
("label: value"), horizontal bars print their value at the bar's end, and a
heatmap cell's level is also its size (the mark grows from a dot to the full
cell; the cells are too small on a phone for numbers inside them). The root
is `role="img"`, named by an SVG `<title>` and described by a `<desc>`
summing the data up (pass `desc=` for a translated one, and `empty=` for the
text of a chart with nothing to show).

Values must be ints (money is never a float); negative values are drawn as
empty bars, their tooltips keep the true value. Geometry is in viewBox units
with one decimal, so the same data always gives the same bytes.
"""
from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

WIDTH = 600         # viewBox units; the SVG scales to its container (width="100%")
FONT = 12
LEVELS = 5          # heat-0 (zero) .. heat-4 (the busiest quarter)
HEAT_SIZES = (0.2, 0.4, 0.6, 0.8, 1.0)    # a cell's mark, as a share of the cell, per level

# Merchants' text may hold characters XML cannot carry at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

Format = Callable[[int], str]


def _t(value) -> str:
    return str(escape(_NOT_XML.sub("\ufffd", str(value))))


def _n(x: float) -> str:
    text = f"{x:.1f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _width(text: str) -> float:
    """Roughly how wide text is drawn: CJK characters are a full em, the rest about two thirds (wide Latin letters included)."""
    return sum(FONT if unicodedata.east_asian_width(c) in "WF" else FONT * 0.66 for c in text)


def _clip(text: str, room: float) -> str:
    if _width(text) <= room:
        return text
    while text and _width(text) + FONT * 0.6 > room:
        text = text[:-1]
    return text + "…"


def _ints(values) -> list[int]:
    out = list(values)
    for v in out:
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"chart values must be int, not {type(v).__name__}: {v!r}")
    return out


def _svg(kind: str, title: str, desc: str, height: float, body: str) -> Markup:
    # The id comes from the content: deterministic, and distinct for different charts on one page.
    ident = "chart-" + hashlib.sha1(f"{kind}\0{title}\0{desc}\0{body}".encode("utf-8", "replace")).hexdigest()[:12]
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" role="img" '
        f'aria-labelledby="{ident}-t {ident}-d" viewBox="0 0 {WIDTH} {_n(height)}" width="100%" '
        f'fill="currentColor" font-size="{FONT}">'
        f'<title id="{ident}-t">{_t(title)}</title><desc id="{ident}-d">{_t(desc)}</desc>{body}</svg>')


def _empty(kind: str, title: str, empty: str) -> Markup:
    body = f'<text class="chart-empty" x="{WIDTH // 2}" y="44" text-anchor="middle">{_t(empty)}</text>'
    return _svg(kind, title, empty, 72, body)


def _summary(count: str, best: str, total: str) -> str:
    return f"{count}; highest {best}; total {total}."


def _series(points: Sequence[tuple[str, int]]) -> tuple[list[str], list[int], int]:
    """(labels, values, the largest value) of a list of (label, value)."""
    points = list(points)
    values = _ints(v for _, v in points)
    return [str(label) for label, _ in points], values, max(values, default=0)


def _thin(count: int, label_width: float, room: float) -> int:
    """Every how many labels to write so that they do not overlap (30 or 90 days)."""
    return max(1, math.ceil(count * (label_width + FONT) / room))


def bars(points: Sequence[tuple[str, int]], *, title: str, value_label: Format = str,
         desc: str | None = None, empty: str = "No data") -> Markup:
    """Vertical bars, one per (label, value), left to right; the axis shows 0 and the largest value."""
    labels, values, top = _series(points)
    if top <= 0:
        return _empty("bars", title, empty)
    best = values.index(top)
    if desc is None:
        desc = _summary(f"{len(values)} values from {labels[0]} to {labels[-1]}",
                        f"{labels[best]}: {value_label(top)}", value_label(sum(values)))
    top_text, zero_text = value_label(top), value_label(0)
    left = max(_width(top_text), _width(zero_text)) + 8
    y_top, y_base, height = 10.0, 180.0, 204
    room = WIDTH - left - 2
    slot = room / len(values)
    parts = [f'<line class="chart-grid" x1="{_n(left)}" x2="{WIDTH}" y1="{_n(y_top)}" y2="{_n(y_top)}" '
             f'stroke="currentColor" stroke-opacity=".25" stroke-dasharray="3 3"/>',
             *(f'<text class="chart-tick" x="{_n(left - 4)}" y="{_n(y + 4)}" text-anchor="end">{_t(text)}</text>'
               for y, text in ((y_top, top_text), (y_base, zero_text)))]
    for i, (label, v) in enumerate(zip(labels, values)):
        x = left + i * slot
        h = (y_base - y_top) * max(v, 0) / top
        if v > 0:
            h = max(h, 1.0)      # a small day is still a visible bar
        # An invisible full-height rectangle carries the tooltip, even for a zero bar.
        parts.append(f'<g class="chart-slot"><title>{_t(label)}: {_t(value_label(v))}</title>'
                     f'<rect x="{_n(x)}" y="{_n(y_top)}" width="{_n(slot)}" height="{_n(y_base - y_top)}" '
                     f'fill-opacity="0"/>'
                     f'<rect class="chart-bar" x="{_n(x + slot * 0.1)}" y="{_n(y_base - h)}" '
                     f'width="{_n(slot * 0.8)}" height="{_n(h)}"/></g>')
    parts.append(f'<line class="chart-axis" x1="{_n(left)}" x2="{WIDTH}" y1="{_n(y_base)}" y2="{_n(y_base)}" '
                 f'stroke="currentColor" stroke-opacity=".6"/>')
    shown = [_clip(label, 96) for label in labels]
    step = _thin(len(shown), max(_width(s) for s in shown), room)
    for i in range(0, len(shown), step):
        parts.append(f'<text class="chart-label" x="{_n(left + (i + 0.5) * slot)}" y="{_n(y_base + 16)}" '
                     f'text-anchor="middle">{_t(shown[i])}</text>')
    return _svg("bars", title, desc, height, "".join(parts))


def hbars(points: Sequence[tuple[str, int]], *, title: str, value_label: Format = str,
          desc: str | None = None, empty: str = "No data") -> Markup:
    """Horizontal bars for a ranking, top to bottom as given: label, bar, the value written at its end."""
    labels, values, top = _series(points)
    if top <= 0:
        return _empty("hbars", title, empty)
    best = values.index(top)
    if desc is None:
        desc = _summary(f"{len(values)} values", f"{labels[best]}: {value_label(top)}", value_label(sum(values)))
    shown = [_clip(label, WIDTH * 0.4) for label in labels]
    texts = [value_label(v) for v in values]
    left = max(_width(s) for s in shown) + 8
    room = max(WIDTH - left - max(_width(s) for s in texts) - 8, WIDTH * 0.2)
    row = 24
    parts = []
    for i, (label, v) in enumerate(zip(labels, values)):
        y = i * row
        w = room * max(v, 0) / top
        if v > 0:
            w = max(w, 1.0)
        parts.append(f'<g class="chart-row"><title>{_t(label)}: {_t(texts[i])}</title>'
                     f'<rect x="0" y="{y}" width="{WIDTH}" height="{row}" fill-opacity="0"/>'
                     f'<text class="chart-label" x="{_n(left - 6)}" y="{y + 16}" '
                     f'text-anchor="end">{_t(shown[i])}</text>'
                     f'<rect class="chart-bar" x="{_n(left)}" y="{y + 4}" width="{_n(w)}" height="{row - 8}"/>'
                     f'<text class="chart-value" x="{_n(left + w + 4)}" y="{y + 16}">{_t(texts[i])}</text></g>')
    return _svg("hbars", title, desc, len(values) * row, "".join(parts))


def _level(value: int, top: int) -> int:
    # Quarters of the largest value, in integers: 1 is (0, top/4], 4 is (3·top/4, top].
    return 0 if value <= 0 else min(LEVELS - 1, -(-(LEVELS - 1) * value // top))


def _mark(level: int, x: float, y: float, size: float) -> str:
    side = size * HEAT_SIZES[level]
    pad = (size - side) / 2
    return (f'<rect class="heat-{level}" x="{_n(x + pad)}" y="{_n(y + pad)}" '
            f'width="{_n(side)}" height="{_n(side)}" rx="{_n(min(2, side / 4))}"/>')


def heatmap(grid: Sequence[Sequence[int]], *, title: str, rows: Sequence[str], columns: Sequence[str],
            value_label: Format = str, desc: str | None = None, empty: str = "No data") -> Markup:
    """A grid of counts (e.g. 7 weekdays × 24 hours): shade and size by level, a legend of the levels."""
    cells = [_ints(r) for r in grid]
    rows, columns = [str(r) for r in rows], [str(c) for c in columns]
    if len(cells) != len(rows) or any(len(r) != len(columns) for r in cells):
        raise ValueError(f"heatmap: expected {len(rows)} rows of {len(columns)} values")
    top = max((v for r in cells for v in r), default=0)
    if top <= 0 or not columns:
        return _empty("heatmap", title, empty)
    if desc is None:
        i, j = next((i, j) for i, r in enumerate(cells) for j, v in enumerate(r) if v == top)
        desc = _summary(f"{len(rows)} × {len(columns)} cells", f"{rows[i]} {columns[j]}: {value_label(top)}",
                        value_label(sum(map(sum, cells))))
    row_shown = [_clip(r, WIDTH * 0.25) for r in rows]
    col_shown = [_clip(c, 96) for c in columns]
    left = max(_width(s) for s in row_shown) + 8
    cell = min((WIDTH - left) / len(columns), 28)
    y0 = 20
    parts = []
    step = _thin(len(columns), max(_width(s) for s in col_shown), WIDTH - left)
    for j in range(0, len(columns), step):
        parts.append(f'<text class="chart-label" x="{_n(left + (j + 0.5) * cell)}" y="14" '
                     f'text-anchor="middle">{_t(col_shown[j])}</text>')
    for i, (name, values) in enumerate(zip(rows, cells)):
        y = y0 + i * cell
        parts.append(f'<text class="chart-label" x="{_n(left - 6)}" y="{_n(y + cell / 2 + 4)}" '
                     f'text-anchor="end">{_t(row_shown[i])}</text>')
        for j, v in enumerate(values):
            x = left + j * cell
            parts.append(f'<g class="heat-cell"><title>{_t(name)} {_t(columns[j])}: {_t(value_label(v))}</title>'
                         f'<rect class="heat-frame" x="{_n(x + 1)}" y="{_n(y + 1)}" width="{_n(cell - 2)}" '
                         f'height="{_n(cell - 2)}" fill-opacity="0" stroke="currentColor" stroke-opacity=".12"/>'
                         f'{_mark(_level(v, top), x + 2, y + 2, cell - 4)}</g>')
    # The legend: each level's mark and the values it stands for, wrapped when it is wider than the chart.
    x, y = left, y0 + len(rows) * cell + 12
    for level in range(LEVELS):
        if level == 0:
            text = value_label(0)
        else:
            low, high = (level - 1) * top // (LEVELS - 1) + 1, level * top // (LEVELS - 1)
            if low > high:
                continue     # a small maximum leaves some levels without any value
            text = value_label(low) if low == high else f"{value_label(low)}–{value_label(high)}"
        item = 14 + 4 + _width(text) + 14
        if x + item > WIDTH and x > left:
            x, y = left, y + 20
        parts.append(f'<g class="chart-legend">{_mark(level, x, y, 14)}'
                     f'<text class="chart-tick" x="{_n(x + 18)}" y="{_n(y + 11)}">{_t(text)}</text></g>')
        x += item
    return _svg("heatmap", title, desc, y + 20, "".join(parts))

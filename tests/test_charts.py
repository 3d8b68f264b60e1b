"""The reports' SVG charts: well-formed XML, merchants' text inert, values readable without colour,
nothing the panel's Content-Security-Policy would refuse (no style attribute, no <style>)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from kamengd.money import format_cents
from kamengd.reports import charts

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '"><script>alert(1)</script>&amp; 卡密 \'x\' <b>\x00\x1f'
DAYS = [(f"2024-05-{d:02d}", d * 1234) for d in range(1, 31)]
WEEK = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
HOURS = [f"{h:02d}" for h in range(24)]
GRID = [[(r * 24 + c) % 11 for c in range(24)] for r in range(7)]


def _parse(chart) -> ET.Element:
    assert isinstance(chart, Markup)
    root = ET.fromstring(str(chart))
    assert root.tag == SVG + "svg"
    return root


def _titles(root, cls) -> list[str]:
    return [g.find(SVG + "title").text for g in root.iter(SVG + "g") if g.get("class") == cls]


def _marks(element) -> list[ET.Element]:
    """A heatmap's level marks (the cells' and the legend's), not the cells' frames."""
    return [r for r in element.iter(SVG + "rect") if r.get("class", "").startswith("heat-")
            and r.get("class") != "heat-frame"]


def _all_charts():
    return [charts.bars(DAYS, title="Sales", value_label=format_cents),
            charts.hbars([("A", 5), ("B", 3)], title="Top"),
            charts.heatmap(GRID, title="Orders", rows=WEEK, columns=HOURS),
            charts.bars([], title="Sales"), charts.hbars([], title="Top"),
            charts.heatmap([[0] * 24] * 7, title="Orders", rows=WEEK, columns=HOURS)]


@pytest.mark.parametrize("index", range(6))
def test_accessible_scalable_and_no_inline_style(index):
    chart = _all_charts()[index]
    root = _parse(chart)
    assert root.get("role") == "img" and root.get("width") == "100%" and root.get("viewBox").startswith("0 0 ")
    named = root.get("aria-labelledby").split()
    assert [root.find(SVG + "title").get("id"), root.find(SVG + "desc").get("id")] == named
    assert root.find(SVG + "desc").text
    assert "style" not in str(chart)        # neither an attribute nor an element
    assert all(e.get("style") is None for e in root.iter())


def test_hostile_labels_are_text():
    for chart in (charts.bars([(HOSTILE, 5)], title=HOSTILE), charts.hbars([(HOSTILE, 5)], title=HOSTILE),
                  charts.heatmap([[1]], title=HOSTILE, rows=[HOSTILE], columns=[HOSTILE])):
        root = _parse(chart)
        assert "<script>" not in str(chart) and "<b>" not in str(chart)
        # Characters XML cannot carry become U+FFFD; the rest reads back exactly.
        readable = HOSTILE.replace("\x00", "\ufffd").replace("\x1f", "\ufffd")
        assert root.find(SVG + "title").text == readable
        assert any(readable in (t.text or "") for t in root.iter(SVG + "title") if t is not root.find(SVG + "title"))
        assert not any(e.tag in (SVG + "script", SVG + "b", "script", "b") for e in root.iter())


def test_bars_tooltips_axis_and_thinned_labels():
    root = _parse(charts.bars(DAYS, title="Sales", value_label=format_cents))
    assert _titles(root, "chart-slot") == [f"{label}: {format_cents(v)}" for label, v in DAYS]
    assert len([r for r in root.iter(SVG + "rect") if r.get("class") == "chart-bar"]) == 30
    ticks = [t.text for t in root.iter(SVG + "text") if t.get("class") == "chart-tick"]
    assert ticks == ["370.20", "0.00"]       # the largest day is labelled on the axis
    labels = [t.text for t in root.iter(SVG + "text") if t.get("class") == "chart-label"]
    assert labels[0] == "2024-05-01" and 2 <= len(labels) < 30


def test_ninety_days_keep_few_labels():
    days = [(f"day {i}", i) for i in range(90)]
    root = _parse(charts.bars(days, title="Sales"))
    assert len([t for t in root.iter(SVG + "text") if t.get("class") == "chart-label"]) <= 15


def test_hbars_write_each_value_at_the_bar():
    points = [("游戏点卡 <100>", 12345), ("Steam & co", 999), ("nothing sold", 0)]
    root = _parse(charts.hbars(points, title="Top products", value_label=format_cents))
    assert [t.text for t in root.iter(SVG + "text") if t.get("class") == "chart-value"] == ["123.45", "9.99", "0.00"]
    assert _titles(root, "chart-row") == ["游戏点卡 <100>: 123.45", "Steam & co: 9.99", "nothing sold: 0.00"]
    widths = [float(r.get("width")) for r in root.iter(SVG + "rect") if r.get("class") == "chart-bar"]
    assert widths[0] > widths[1] > widths[2] == 0


def test_heatmap_week_by_hour():
    root = _parse(charts.heatmap(GRID, title="Orders by hour", rows=WEEK, columns=HOURS))
    titles = _titles(root, "heat-cell")
    assert len(titles) == 168
    assert titles[0] == "Mon 00: 0" and titles[-1] == f"Sun 23: {GRID[6][23]}"
    # A level is one size as well as one shade (that sizes grow: test_heatmap_levels_grow_with_the_value).
    sizes = {}
    for g in root.iter(SVG + "g"):
        if g.get("class") == "heat-cell":
            mark = _marks(g)[0]
            sizes.setdefault(mark.get("class"), set()).add(mark.get("width"))
    assert sorted(sizes) == [f"heat-{n}" for n in range(5)] and all(len(s) == 1 for s in sizes.values())
    legend = [t.text for g in root.iter(SVG + "g") if g.get("class") == "chart-legend" for t in g.iter(SVG + "text")]
    assert legend == ["0", "1–2", "3–5", "6–7", "8–10"]


def test_heatmap_levels_grow_with_the_value():
    root = _parse(charts.heatmap([[0, 1, 2, 3, 4]], title="t", rows=["r"], columns=list("abcde")))
    cells = _marks(root)[:5]
    assert [m.get("class") for m in cells] == ["heat-0", "heat-1", "heat-2", "heat-3", "heat-4"]
    widths = [float(m.get("width")) for m in cells]
    assert widths == sorted(widths) and len(set(widths)) == 5


def test_heatmap_shape_is_checked():
    with pytest.raises(ValueError):
        charts.heatmap([[1, 2]], title="t", rows=["a"], columns=["x"])


@pytest.mark.parametrize("chart", [
    lambda: charts.bars([], title="Sales"), lambda: charts.bars([("a", 0), ("b", 0)], title="Sales"),
    lambda: charts.hbars([("a", 0)], title="Top"), lambda: charts.heatmap([], title="t", rows=[], columns=[]),
    lambda: charts.heatmap([[0] * 24] * 7, title="t", rows=WEEK, columns=HOURS)])
def test_empty_data_says_so(chart):
    root = _parse(chart())
    assert [t.text for t in root.iter(SVG + "text")] == ["No data"]
    assert root.find(SVG + "desc").text == "No data"


def test_empty_text_and_desc_come_from_the_caller():
    root = _parse(charts.bars([], title="销售", empty="暂无数据"))
    assert [t.text for t in root.iter(SVG + "text")] == ["暂无数据"]
    root = _parse(charts.bars([("a", 1)], title="销售", desc="一天，1 元"))
    assert root.find(SVG + "desc").text == "一天，1 元"


def test_default_desc_sums_up_the_data():
    desc = _parse(charts.bars(DAYS, title="Sales", value_label=format_cents)).find(SVG + "desc").text
    assert "2024-05-01" in desc and "2024-05-30: 370.20" in desc and format_cents(sum(v for _, v in DAYS)) in desc


@pytest.mark.parametrize("bad", [9.9, True, "5"])
def test_values_must_be_integers(bad):
    with pytest.raises(TypeError):
        charts.bars([("a", bad)], title="t")
    with pytest.raises(TypeError):
        charts.heatmap([[bad]], title="t", rows=["r"], columns=["c"])


def test_deterministic_and_distinct_ids():
    assert _all_charts() == _all_charts()
    ids = {_parse(c).find(SVG + "title").get("id") for c in _all_charts()}
    assert len(ids) == 6


def test_negative_values_draw_no_bar_but_keep_their_value():
    root = _parse(charts.bars([("refunds", -500), ("sales", 1000)], title="t", value_label=format_cents))
    assert _titles(root, "chart-slot") == ["refunds: -5.00", "sales: 10.00"]
    heights = [float(r.get("height")) for r in root.iter(SVG + "rect") if r.get("class") == "chart-bar"]
    assert heights[0] == 0 and heights[1] > 0

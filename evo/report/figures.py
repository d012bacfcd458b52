"""Plotly figures of the report, as plain figure dicts ({"data": [...], "layout": {...}}) that
plotly.js draws. They are built as dicts rather than `plotly.graph_objects` so that a
10,000-candidate run costs no validation time; the tests validate them with `go.Figure`.

Per-candidate hover labels are not repeated in every figure: a trace whose `meta` is "hover"
carries candidate positions in `customdata`, and the page fills its `text` from one shared list.
Traces with more than GL_THRESHOLD points use WebGL (`scattergl`); the page falls back to SVG where
the browser has no WebGL.
"""

from __future__ import annotations

import math
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any, Sequence

from evo.core import counts
from evo.core import format as fmt
from evo.report import data
from evo.report.data import Lineage

GL_THRESHOLD = 1500

COLORS = {
    "accepted": "#2a9d4b", "rejected": "#a8adb4", "failed": "#d1495b", "pruned": "#c9a227", "undecided": "#3a7bd5",
    "best": "#111827", "temperature": "#e07a1f", "path": "#f59e0b", "edge": "#c3c8cf", "edge2": "#8fb3e0",
    "idle": "#f4b6bd", "running": "#3a7bd5", "waiting": "#93b4e8", "imported": "#8d6a9f", "seed": "#111827",
}
REASON_COLORS = ["#d1495b", "#edae49", "#00798c", "#30638e", "#8d6a9f", "#66a182", "#c9a227", "#5c5c5c",
                 "#e07a1f", "#4f6d7a"]
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"


def base_layout(**extra: Any) -> dict:
    layout = {
        "font": {"family": FONT, "size": 12, "color": "#1f2937"},
        "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff",
        "margin": {"l": 64, "r": 24, "t": 36, "b": 48},
        "hovermode": "closest",
        "hoverlabel": {"font": {"family": FONT, "size": 12}, "align": "left"},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        "xaxis": {"gridcolor": "#eef0f3", "zeroline": False},
        "yaxis": {"gridcolor": "#eef0f3", "zeroline": False},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            layout[key] = {**layout[key], **value}
        else:
            layout[key] = value
    return layout


def scatter_type(n: int) -> str:
    return "scattergl" if n > GL_THRESHOLD else "scatter"


@lru_cache(maxsize=65536)
def clock(moment: datetime | None, tz: tzinfo | None) -> str | None:
    """A time as plotly reads it on a date axis, in the report's time zone (memoized: the same
    moments appear in several figures)."""
    if moment is None:
        return None
    return data.utc(moment).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def empty(message: str, height: int = 220) -> dict:
    return {"data": [], "layout": base_layout(
        height=height, xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": message, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "font": {"size": 14, "color": "#6b7280"}}])}


def value_range(values: Sequence[float], anchor: float | None = None, q: float = 0.9) -> tuple[float, float, bool]:
    """A y range that shows the interesting part: from the lowest value to the q-quantile (or the
    anchor, the seed, if higher). Returns (lo, hi, clipped)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return 0.0, 1.0, False
    lo = vals[0]
    hi = vals[min(len(vals) - 1, int(q * (len(vals) - 1) + 0.999))]
    if anchor is not None:
        hi = max(hi, anchor)
    if len(vals) < 20:
        hi = vals[-1]
    pad = (hi - lo) * 0.08 or max(abs(lo) * 1e-3, 1e-4)
    return lo - pad, hi + pad, vals[-1] > hi + pad


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------

def progress(cands: Sequence[Any], lin: Lineage, prog: data.Progress, axis: str, tz: tzinfo | None,
             max_labels: int = 25) -> dict:
    """val_bpb of every evaluated child over wall time (axis="time") or candidate number
    (axis="number"), the seed, the running best, the temperature and labelled improvements; on
    the number axis a seeded run's imported history comes first, as its own series with its own
    running best, so the greedy run and evo read as one story. Legend counts are the header's."""
    by_time = axis == "time"
    x_of = (lambda i: clock(prog.when[i], tz)) if by_time else (lambda i: cands[i].number)
    shown = (lambda i: prog.when[i] is not None) if by_time else (lambda i: True)
    measured = [i for k in ("accepted", "rejected", "undecided") for i in prog.points[k]]
    marks = prog.points["failed"] + prog.points["pruned"]
    history = {k: v for k, v in prog.history.items() if v and not by_time}
    if not measured and not marks and prog.seed < 0 and not history:
        return empty("no candidate evaluated yet")
    seed_value = cands[lin.seed].val_bpb if lin.seed >= 0 else None
    values = [cands[i].val_bpb for i in measured + ([prog.seed] if prog.seed >= 0 else [])]
    values += [cands[i].imported_val_bpb for i in history.get("accepted", []) + history.get("rejected", [])]
    lo, hi, clipped = value_range(values, seed_value)
    lo -= (hi - lo) * 0.06  # room for the label under the lowest step
    top = hi - (hi - lo) * 0.02   # the row of those without a value
    kind = scatter_type(len(measured) + len(marks) + sum(map(len, history.values())))
    traces = []

    def points(name: str, idx: list[int], y: list[float], marker: dict, **extra: Any) -> None:
        idx_y = [(i, v) for i, v in zip(idx, y) if shown(i)]
        if idx_y:
            traces.append({"type": kind, "mode": "markers", "name": name, "meta": "hover",
                           "x": [x_of(i) for i, _ in idx_y], "y": [v for _, v in idx_y],
                           "customdata": [i for i, _ in idx_y], "marker": marker,
                           "hovertemplate": "%{text}<extra></extra>", **extra})

    for key, idx in history.items():
        ys = [cands[i].imported_val_bpb if key != "failed" else top for i in idx]
        style = {"accepted": {"color": COLORS["imported"], "size": 7, "symbol": "square"},
                 "rejected": {"color": COLORS["imported"], "size": 6, "symbol": "square-open", "opacity": 0.6},
                 "failed": {"color": COLORS["imported"], "size": 7, "symbol": "x-thin-open",
                            "line": {"width": 1.5, "color": COLORS["imported"]}}}[key]
        points(f"imported: {counts.word(key, counts.HISTORY)} ({len(idx)})", idx, ys, style, legendgroup="history")
    if prog.history_best and not by_time:
        xs = [n for n, _, _ in prog.history_best]
        ys = [v for _, v, _ in prog.history_best]
        end = cands[lin.seed].number if lin.seed >= 0 else max(cands[i].number for i in prog.history["accepted"])
        traces.append({"type": "scatter", "mode": "lines", "name": "imported run's best", "x": xs + [end],
                       "y": ys + [ys[-1]], "legendgroup": "history",
                       "line": {"shape": "hv", "color": COLORS["imported"], "width": 2, "dash": "dash"},
                       "hoverinfo": "skip"})
    styles = {
        "rejected": {"color": COLORS["rejected"], "size": 6, "opacity": 0.65},
        "undecided": {"color": COLORS["undecided"], "size": 7, "symbol": "circle-open"},
        "accepted": {"color": COLORS["accepted"], "size": 8, "line": {"width": 0.5, "color": "#ffffff"}},
    }
    for key in ("rejected", "undecided", "accepted"):
        idx = prog.points[key]
        points(f"{key} ({len(idx)})", idx, [cands[i].val_bpb for i in idx], styles[key])
    for key, symbol in (("failed", "x-thin-open"), ("pruned", "line-ns-open")):
        idx = prog.points[key]
        points(f"{key} ({len(idx)})", idx, [top] * len(idx),
               {"color": COLORS[key], "symbol": symbol, "size": 7, "line": {"width": 1.5, "color": COLORS[key]}})
    if prog.seed >= 0:
        points("seed", [prog.seed], [cands[prog.seed].val_bpb],
               {"color": COLORS["seed"], "symbol": "star", "size": 13, "line": {"width": 1, "color": "#ffffff"}})
    steps = prog.best_time if by_time else prog.best_number
    if steps:
        xs = [clock(t, tz) if by_time else t for t, _, _ in steps]
        ys = [v for _, v, _ in steps]
        end = (clock(max(w for w in prog.when if w is not None), tz) if by_time
               else max(c.number for c in cands))
        traces.append({"type": "scatter", "mode": "lines", "name": "running best", "x": xs + [end],
                       "y": ys + [ys[-1]], "line": {"shape": "hv", "color": COLORS["best"], "width": 2},
                       "hoverinfo": "skip"})
    temps = prog.temperature_time if by_time else prog.temperature_number
    if temps and any(t > 0 for _, t in temps):
        xs = [clock(t, tz) if by_time else t for t, _ in temps]
        traces.append({"type": scatter_type(len(temps)), "mode": "lines", "name": "temperature T", "x": xs,
                       "y": [t for _, t in temps], "yaxis": "y2",
                       "line": {"color": COLORS["temperature"], "width": 1.5, "dash": "dot"},
                       "hovertemplate": f"T %{{y:.{fmt.DECIMALS}f}}<extra></extra>"})
    # Each improvement of the best (and of the imported run's best), labelled with its hypothesis
    # just under its step of the running best: the space below a staircase is empty (nothing kept
    # is below its best), so labels placed there without overlapping each other stay readable.
    items_of: list[tuple[int, float, str]] = []   # (position, value, colour)
    previous = None
    gains = {}
    for i in prog.improvements:
        v = cands[i].val_bpb
        gains[i] = (previous - v) if previous is not None else float("inf")
        previous = v
        items_of.append((i, v, "#14532d"))
    previous = None
    for _, v, i in (prog.history_best if not by_time else []):
        gains[i] = ((previous - v) if previous is not None else 0.0) / 2  # evo's own steps first
        previous = v
        items_of.append((i, v, "#5b3a6e"))
    xs_all = [x for t in traces if t.get("meta") == "hover" for x in t["x"]]
    annotations = []
    if xs_all and items_of:
        num = (lambda x: datetime.fromisoformat(x).timestamp()) if by_time else float
        x_lo, x_hi = min(num(x) for x in xs_all), max(num(x) for x in xs_all)
        items, colour = [], {}
        for i, v, c in items_of:
            if not shown(i):
                continue
            text = "seed" if i == lin.seed else f"#{cands[i].number} {data.shorten(cands[i].hypothesis, 48)}"
            items.append((i, num(x_of(i)), v, text, gains[i]))
            colour[i] = c
        placed = place_labels(items, x_lo, x_hi, lo, hi, max_labels=max_labels)
        for i, x, y, text, _ in items:
            if i not in placed:
                continue
            side, row = placed[i]
            annotations.append({"x": x_of(i), "y": y, "text": data.escape(text), "showarrow": False,
                                "xanchor": side, "yanchor": "top", "xshift": 4 if side == "left" else -4,
                                "yshift": -3 - 15 * row, "font": {"size": 10.5, "color": colour[i]},
                                "bgcolor": "rgba(255,255,255,0.7)", "captureevents": False})
    if by_time and any(prog.history.values()):
        annotations.append({"text": f"{sum(map(len, prog.history.values()))} imported candidates: on the "
                                    "candidate-number view", "showarrow": False, "xref": "paper", "yref": "paper",
                            "x": 1, "y": 0, "xanchor": "right", "yanchor": "bottom",
                            "font": {"size": 10.5, "color": COLORS["imported"]}})
    layout = base_layout(
        height=460, annotations=annotations,
        xaxis={"title": {"text": "wall time" + (f" ({_tzname(tz)})" if by_time else "")} if by_time
               else {"text": "candidate number"}},
        yaxis={"title": {"text": "val_bpb (lower is better)"}, "range": [lo, hi]},
        margin={"r": 70 if temps else 24},
    )
    if by_time:
        layout["xaxis"]["type"] = "date"
    if temps and any(t > 0 for _, t in temps):
        layout["yaxis2"] = {"title": {"text": "temperature T", "font": {"color": COLORS["temperature"]}},
                            "overlaying": "y", "side": "right", "showgrid": False, "rangemode": "tozero",
                            "tickfont": {"color": COLORS["temperature"]}}
    return {"data": traces, "layout": layout}


def place_labels(items: Sequence[tuple[Any, float, float, str, float]], x_lo: float, x_hi: float, y_lo: float,
                 y_hi: float, width: float = 1100.0, height: float = 340.0, char_w: float = 6.0,
                 line_h: float = 15.0, max_labels: int = 25, rows: int = 3) -> dict[Any, tuple[str, int]]:
    """Choose which labels to show, hanging under their point (in the first of `rows` rows that
    is free), and on which side ("left": the text runs right from the point, "right": it ends at
    the point), so that none overlaps another or leaves a nominal plot of `width` x `height`
    pixels. Items are (key, x, y, text, priority); the highest priorities are placed first.
    Returns {key: (side, row)}."""
    sx = width / (x_hi - x_lo) if x_hi > x_lo else 0.0
    sy = height / (y_hi - y_lo) if y_hi > y_lo else 0.0
    boxes: list[tuple[float, float, float, float]] = []
    chosen: dict[Any, str] = {}
    for key, x, y, text, _ in sorted(items, key=lambda t: -t[4]):
        if len(chosen) >= max_labels:
            break
        px = (x - x_lo) * sx if sx else width / 2
        py = (y_hi - y) * sy + 3
        w = len(text) * char_w + 6
        for row in range(rows):
            for side in ("left", "right"):
                x0 = px + 4 if side == "left" else px - 4 - w
                top = py + row * line_h
                box = (x0, top, x0 + w, top + line_h)
                if x0 < 0 or box[2] > width or box[3] > height + 4:
                    continue
                if all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in boxes):
                    boxes.append(box)
                    chosen[key] = (side, row)
                    break
            if key in chosen:
                break
    return chosen


def _tzname(tz: tzinfo | None) -> str:
    return datetime.now(tz).strftime("%Z") or "local"


# ---------------------------------------------------------------------------
# Lineage
# ---------------------------------------------------------------------------

LINEAGE_STYLES = {   # outcome -> marker colour, filled or hollow
    "accepted": (COLORS["accepted"], True), "rejected": (COLORS["rejected"], False),
    "undecided": (COLORS["undecided"], False), "running": (COLORS["running"], False),
    "waiting": (COLORS["waiting"], False), "failed": (COLORS["failed"], False), "pruned": (COLORS["pruned"], False),
}


def lineage(cands: Sequence[Any], lin: Lineage, axis: str, tz: tzinfo | None, max_labels: int = 20) -> dict:
    """The family tree of candidates on the val_bpb axis (lower is better): x is the generation
    (axis="generation") or the creation time (axis="time"), y the val_bpb, lines to parents
    (dotted: second parents), the path from the seed to the best drawn over them and each
    improvement of the best labelled with its hypothesis. Colour is the outcome (filled green:
    accepted), the marker the operator; imported history has a colour of its own (measured
    elsewhere); those without a value (failed, pruned, not evaluated yet) sit on a row above."""
    n = len(cands)
    if n == 0:
        return empty("no candidates yet", height=300)
    by_time = axis == "time"
    xs = [clock(c.created_at, tz) for c in cands] if by_time else list(lin.generation)
    value = [data.node_value(c, i, lin) for i, c in enumerate(cands)]
    seed_value = cands[lin.seed].val_bpb if lin.seed >= 0 else None
    lo, hi, _ = value_range([v for v in value if v is not None], seed_value, q=0.95)
    span = hi - lo
    band = hi + 0.07 * span     # the row of those without a value
    # Values off the top of the range are drawn at its edge (the hover label has the value).
    ys = [band if v is None else min(v, hi) for v in value]
    kind = scatter_type(n)
    size = 9 if n < 300 else 7 if n < 3000 else 5

    def edge_xy(pairs: Sequence[tuple[int, int]]) -> tuple[list, list]:
        ex, ey = [], []
        for a, b in pairs:
            ex += [xs[a], xs[b], None]
            ey += [ys[a], ys[b], None]
        return ex, ey

    first, second, path = data.edges(lin)
    # Edges into the row of those without a value would cross the whole figure: their parent is in
    # their hover label and details instead.
    first = [(a, b) for a, b in first if value[b] is not None]
    second = [(a, b) for a, b in second if value[b] is not None]
    traces = []
    ex, ey = edge_xy(first)
    if ex:
        traces.append({"type": scatter_type(len(first)), "mode": "lines", "name": "parent → child", "x": ex,
                       "y": ey, "line": {"color": COLORS["edge"], "width": 0.7}, "opacity": 0.8,
                       "hoverinfo": "skip", "showlegend": False})
    ex, ey = edge_xy(second)
    if ex:
        many = len(second) > 150
        traces.append({"type": scatter_type(len(second)), "mode": "lines",
                       "name": f"second parent ({len(second)}{', click to show' if many else ''})", "x": ex,
                       "y": ey, "line": {"color": COLORS["edge2"], "width": 0.8, "dash": "dot"}, "opacity": 0.6,
                       "hoverinfo": "skip", **({"visible": "legendonly"} if many else {})})
    if len(path) > 0:
        ex, ey = edge_xy(path)
        traces.append({"type": "scatter", "mode": "lines", "name": "path to the best", "x": ex, "y": ey,
                       "line": {"color": COLORS["path"], "width": 3.5}, "hoverinfo": "skip"})
    history = [i for i in range(n) if lin.role[i] == counts.HISTORY]
    if history:
        traces.append({"type": kind, "mode": "markers", "meta": "hover", "customdata": history,
                       "name": f"imported ({len(history)}, measured elsewhere)", "x": [xs[i] for i in history],
                       "y": [ys[i] for i in history],
                       "marker": {"color": COLORS["imported"], "size": size - 1,
                                  "symbol": ["square" if lin.outcome[i] == "accepted" else "x-thin-open"
                                             if lin.outcome[i] == "failed" else "square-open" for i in history],
                                  "line": {"width": 1, "color": COLORS["imported"]}},
                       "hovertemplate": "%{text}<extra></extra>"})
    for key, (colour, filled) in LINEAGE_STYLES.items():   # children: the header's counts
        idx = [i for i in range(n) if lin.outcome[i] == key and lin.role[i] == counts.CHILD]
        if not idx:
            continue
        symbols = [data.operator_symbol(cands[i].operator) + ("" if filled else "-open") for i in idx]
        traces.append({"type": kind, "mode": "markers", "name": f"{key} ({len(idx)})", "meta": "hover",
                       "customdata": idx, "x": [xs[i] for i in idx], "y": [ys[i] for i in idx],
                       "marker": {"color": colour, "symbol": symbols, "size": size,
                                  "line": {"width": 1.2 if not filled else 0.5,
                                           "color": colour if not filled else "#ffffff"}},
                       "hovertemplate": "%{text}<extra></extra>"})
    if lin.seed >= 0:
        colour = LINEAGE_STYLES.get(lin.outcome[lin.seed], (COLORS["seed"], True))[0]
        traces.append({"type": "scatter", "mode": "markers", "name": f"seed ({lin.outcome[lin.seed]})", "meta": "hover",
                       "customdata": [lin.seed], "x": [xs[lin.seed]], "y": [ys[lin.seed]],
                       "marker": {"color": COLORS["seed"], "symbol": "star", "size": size + 6,
                                  "line": {"width": 1.5, "color": colour}},
                       "hovertemplate": "%{text}<extra></extra>"})
    if lin.path:
        traces.append({"type": "scatter", "mode": "markers", "name": "on the path", "meta": "hover",
                       "customdata": list(lin.path), "x": [xs[i] for i in lin.path], "y": [ys[i] for i in lin.path],
                       "marker": {"size": size + 6, "color": "rgba(0,0,0,0)", "symbol": "circle",
                                  "line": {"width": 2.5, "color": COLORS["path"]}},
                       "hovertemplate": "%{text}<extra></extra>", "showlegend": False})
    # Improvements of the best along the path, labelled as the progress figure labels them.
    annotations = []
    steps, current = [], math.inf
    for i in lin.path:
        v = value[i]
        if v is not None and v < current and lin.role[i] != counts.HISTORY:
            steps.append((i, (current - v) if current < math.inf else float("inf")))
            current = v
    if steps:
        num = (lambda x: datetime.fromisoformat(x).timestamp()) if by_time else float
        x_lo, x_hi = min(num(x) for x in xs), max(num(x) for x in xs)
        items = [(i, num(xs[i]), ys[i], ("seed" if i == lin.seed else f"#{cands[i].number} "
                                         + data.shorten(cands[i].hypothesis, 40)), gain) for i, gain in steps]
        placed = place_labels(items, x_lo, x_hi, lo, band, height=480, max_labels=max_labels)
        for i, x, y, text, _ in items:
            if i in placed:
                side, row = placed[i]
                annotations.append({"x": xs[i], "y": y, "text": data.escape(text), "showarrow": False,
                                    "xanchor": side, "yanchor": "top", "xshift": 5 if side == "left" else -5,
                                    "yshift": -4 - 15 * row, "font": {"size": 10.5, "color": "#92400e"},
                                    "bgcolor": "rgba(255,255,255,0.75)", "captureevents": False})
    if any(v is None for v in value):
        annotations.append({"text": "no val_bpb", "showarrow": False, "xref": "paper", "yref": "y", "x": 0,
                            "y": band, "xanchor": "right", "xshift": -6, "font": {"size": 10, "color": "#6b7280"}})
    gens = lin.generation
    layout = base_layout(
        height=620 if n < 2000 else 820, annotations=annotations, dragmode="zoom",
        xaxis={"title": {"text": f"creation time ({_tzname(tz)})" if by_time else "generation (depth from the seed)"},
               **({"type": "date"} if by_time else {"dtick": _dtick(gens), "range": [min(gens) - 0.6, max(gens) + 0.6],
                                                     "zeroline": False})},
        yaxis={"title": {"text": "val_bpb (lower is better)"}, "range": [lo - 0.03 * span, band + 0.04 * span]},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "xanchor": "left"},
        margin={"l": 76, "t": 48},
    )
    return {"data": traces, "layout": layout}


def _dtick(generations: Sequence[int]) -> int | None:
    span = (max(generations) - min(generations)) if generations else 0
    return None if span > 30 else 1


# ---------------------------------------------------------------------------
# Slot timeline
# ---------------------------------------------------------------------------

def slots(cands: Sequence[Any], lin: Lineage, tl: data.Timeline, tz: tzinfo | None) -> dict:
    """One row per slot, one bar per evaluation, coloured by its candidate's outcome (the legend
    counts evaluations, not candidates); idle gaps in pink."""
    if not tl.segments:
        return empty("no evaluation has started yet")
    label = {s: f"{s} · {100 * tl.utilisation[s]:.0f}% busy" for s in tl.slots}
    groups: dict[str, list[data.Segment]] = {}
    for seg in tl.segments:
        if seg.outcome == data.RUNNING:
            key = "running"
        elif seg.outcome == data.FAIL:
            key = "failed"
        else:
            key = lin.outcome[seg.candidate] if seg.candidate >= 0 else "undecided"
            key = key if key in ("accepted", "rejected", "pruned") else "undecided"
        groups.setdefault(key, []).append(seg)
    total = len(tl.segments)
    width = 16 if len(tl.slots) <= 8 else 9 if len(tl.slots) <= 16 else 5
    traces = []
    if tl.idle:
        ix, iy, it = [], [], []
        for slot, a, b in tl.idle:
            gap = (b - a).total_seconds()
            ix += [clock(a, tz), clock(b, tz), None]
            iy += [label[slot], label[slot], None]
            it += [f"{slot} idle {gap / 60:.1f} min", f"{slot} idle {gap / 60:.1f} min", None]
        idle_total = sum((b - a).total_seconds() for _, a, b in tl.idle)
        traces.append({"type": scatter_type(len(tl.idle) * 2), "mode": "lines",
                       "name": f"idle ({len(tl.idle)} gaps, {idle_total / 3600:.2f} slot-h)",
                       "x": ix, "y": iy, "text": it, "hovertemplate": "%{text}<extra></extra>",
                       "line": {"color": COLORS["idle"], "width": max(3, width // 3)}})
    order = ("accepted", "rejected", "undecided", "pruned", "failed", "running")
    for key in order:
        segs = groups.get(key)
        if not segs:
            continue
        sx, sy, cd = [], [], []
        for seg in segs:
            dur = (seg.end - seg.start).total_seconds()
            # a hair of space between back-to-back evaluations, so each bar reads on its own
            trim = min(dur * 0.02, 5.0)
            end = seg.end - (seg.end - seg.start) * (trim / dur) if dur > 0 else seg.end
            sx += [clock(seg.start, tz), clock(end, tz), None]
            sy += [label[seg.slot], label[seg.slot], None]
            cd += [seg.candidate, seg.candidate, -1]
        noun = "evaluation" if len(segs) == 1 else "evaluations"
        traces.append({"type": scatter_type(total * 2), "mode": "lines", "name": f"{key} ({len(segs)} {noun})",
                       "meta": "hover", "x": sx, "y": sy, "customdata": cd,
                       "line": {"color": COLORS[key], "width": width}, "hovertemplate": "%{text}<extra></extra>"})
    layout = base_layout(
        height=max(220, 70 + 34 * len(tl.slots)),
        xaxis={"type": "date", "title": {"text": f"wall time ({_tzname(tz)})"}},
        yaxis={"type": "category", "categoryorder": "array", "categoryarray": [label[s] for s in reversed(tl.slots)],
               "showgrid": False},
        margin={"l": 130},
    )
    return {"data": traces, "layout": layout}


# ---------------------------------------------------------------------------
# Acceptance rate against temperature
# ---------------------------------------------------------------------------

def acceptance(bins: Sequence[data.AcceptanceBin], t0: float | None) -> dict:
    if not bins:
        return empty("no Metropolis decision yet (only children judged at a temperature count)")
    labels = [f"{b.t_mid:.2g}" for b in bins]
    ranges = [f"{b.t_lo:.3g}" if b.t_lo == b.t_hi else f"{b.t_lo:.3g} to {b.t_hi:.3g}" for b in bins]
    traces = [
        {"type": "bar", "name": "all judged children", "x": labels, "y": [b.rate for b in bins],
         "marker": {"color": "#9ec5a8"},
         "customdata": [[b.n, b.accepted, r] for b, r in zip(bins, ranges)],
         "hovertemplate": "T %{customdata[2]}<br>accepted %{customdata[1]} of %{customdata[0]} (%{y:.0%})"
                          "<extra></extra>"},
        {"type": "bar", "name": "children worse than their competitor", "x": labels,
         "y": [b.worse_rate for b in bins], "marker": {"color": COLORS["accepted"]},
         "customdata": [[b.worse, b.worse_accepted, r] for b, r in zip(bins, ranges)],
         "hovertemplate": "T %{customdata[2]}<br>worse children accepted %{customdata[1]} of %{customdata[0]} "
                          "(%{y:.0%})<extra></extra>"},
        {"type": "scatter", "mode": "lines+markers", "name": "expected for the worse: mean exp(−Δ/T)", "x": labels,
         "y": [b.expected_worse for b in bins], "line": {"color": COLORS["temperature"], "dash": "dot"},
         "hovertemplate": "expected %{y:.0%}<extra></extra>"},
    ]
    layout = base_layout(
        height=380, barmode="group",
        xaxis={"title": {"text": "temperature T: median of each bin (bins of equal count)"}, "type": "category",
               "tickangle": 0},
        yaxis={"title": {"text": "acceptance rate"}, "tickformat": ".0%", "range": [0, 1.05]},
    )
    return {"data": traces, "layout": layout}


# ---------------------------------------------------------------------------
# Failure reasons over time
# ---------------------------------------------------------------------------

def failures(f: data.Failures, tz: tzinfo | None) -> dict:
    if not f.edges:
        return empty("no candidate finished yet")
    if not f.counts:
        return empty("no failures: every finished candidate was evaluated")
    mids = [clock(a + (b - a) / 2, tz) for a, b in zip(f.edges, f.edges[1:])]
    width_ms = max((f.edges[1] - f.edges[0]).total_seconds() * 1000 * 0.9, 1.0) if len(f.edges) > 1 else None
    traces = []
    for k, (reason, counts) in enumerate(f.counts.items()):
        trace = {"type": "bar", "name": f"{reason} ({sum(counts)})", "x": mids, "y": counts,
                 "marker": {"color": REASON_COLORS[k % len(REASON_COLORS)]},
                 "hovertemplate": f"{data.escape(reason)}: %{{y}}<extra></extra>"}
        if width_ms:
            trace["width"] = width_ms
        traces.append(trace)
    failed = [sum(c[j] for c in f.counts.values()) for j in range(len(f.totals))]
    share = [failed[j] / f.totals[j] if f.totals[j] else None for j in range(len(f.totals))]
    traces.append({"type": "scatter", "mode": "lines+markers", "name": "share of finished candidates",
                   "x": mids, "y": share, "yaxis": "y2", "line": {"color": "#374151", "width": 1.5},
                   "customdata": f.totals,
                   "hovertemplate": "%{y:.0%} of %{customdata} finished<extra></extra>"})
    layout = base_layout(
        height=360, barmode="stack", bargap=0.05,
        xaxis={"type": "date", "title": {"text": f"wall time ({_tzname(tz)})"}},
        yaxis={"title": {"text": "failed or pruned candidates"}, "rangemode": "tozero", "tick0": 0,
               "dtick": max(1, math.ceil(max(failed) / 5))},
        yaxis2={"overlaying": "y", "side": "right", "tickformat": ".0%", "range": [0, 1.02], "showgrid": False,
                "tick0": 0, "dtick": 0.25, "title": {"text": "share"}},
        margin={"r": 60},
    )
    return {"data": traces, "layout": layout}


# ---------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------

def curves(cands: Sequence[Any], series: Sequence[data.Curve]) -> dict:
    if not series:
        return empty("no training curve recorded yet")
    path = [c for c in series if c.role == "path"]
    traces = []
    for k, c in enumerate(series):
        cand = cands[c.position]
        name = f"#{c.number} " + ("seed" if c.role == "seed" else data.escape(data.shorten(cand.hypothesis, 40)))
        if c.role == "seed":
            line = {"color": COLORS["best"], "width": 2, "dash": "dash"}
        elif c.role == "best":
            line = {"color": COLORS["path"], "width": 3}
        else:
            shade = 0.25 + 0.6 * (path.index(c) + 1) / (len(path) + 1)
            line = {"color": f"rgba(58,123,213,{shade:.2f})", "width": 1.2}
        traces.append({"type": scatter_type(len(c.elapsed)), "mode": "lines", "name": name, "x": c.elapsed,
                       "y": c.loss, "line": line, "meta": "hover", "customdata": [c.position] * len(c.elapsed),
                       "hovertemplate": f"#{c.number}: loss %{{y:.4f}} at %{{x:.0f}} s<extra></extra>"})
    # Focus on where the curves differ: from the lowest loss up to the losses at a fifth of training.
    all_loss = [v for c in series for v in c.loss]
    later = [v for c in series for x, v in zip(c.elapsed, c.loss) if c.elapsed and x >= 0.2 * max(c.elapsed)]
    yaxis = {"title": {"text": "training loss"}}
    if later and all_loss:
        lo, hi = min(all_loss), max(later)
        if hi > lo:
            pad = 0.05 * (hi - lo)
            yaxis["range"] = [lo - pad, hi + pad]
    layout = base_layout(height=420, xaxis={"title": {"text": "training seconds"}}, yaxis=yaxis,
                         legend={"orientation": "v", "x": 1.01, "y": 1, "xanchor": "left", "yanchor": "top",
                                 "font": {"size": 10}},
                         margin={"r": 260})
    return {"data": traces, "layout": layout}

"""The page: header and section skeleton rendered here, figures and the interactive parts drawn
by assets/report.js from data embedded as JSON. One self-contained file: plotly.js inline (or
from its CDN with `cdn=True`), the CSS and JS inline, per-candidate details zlib-compressed and
base64-encoded in chunks that the page inflates on demand."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, tzinfo
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

from evo import __version__
from evo.core import format as fmt
from evo.storage import FAILED
from evo.report import data

ASSETS = Path(__file__).parent / "assets"

SECTIONS = (("progress", "Progress"), ("lineage", "Lineage"), ("candidates", "Candidates"), ("path", "Best path"),
            ("slots", "Slots"), ("acceptance", "Acceptance"), ("failures", "Failures"), ("curves", "Curves"))


@lru_cache(maxsize=1)
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs
    return get_plotlyjs()


SERVED_PLOTLY = "/plotly.js"   # where `evo report --watch` serves plotly.js (once per browser, not per reload)

# What a watched page adds: it asks the server for the archive's revision every few seconds and
# reloads when it changed, keeping the reader's place (scroll position; the open candidate is in
# the URL's #c<number>).
LIVE_SCRIPT = """(function () {
  var revision = document.querySelector('meta[name="evo-revision"]').content;
  var every = +document.querySelector('meta[name="evo-watch"]').content * 1000;
  var y = sessionStorage.getItem("evo-scroll");
  if ("scrollRestoration" in history) history.scrollRestoration = "manual";
  if (y !== null) {   // back to where the reader was once the figures are drawn (the page is full height then)
    sessionStorage.removeItem("evo-scroll");
    var back = setInterval(function () { if (window.evoReady) { clearInterval(back); window.scrollTo(0, +y); } }, 50);
  }
  setInterval(function () {
    fetch("/revision", {cache: "no-store"}).then(function (r) { return r.ok ? r.text() : revision; }).then(function (t) {
      if (t.trim() !== revision) { sessionStorage.setItem("evo-scroll", String(window.scrollY)); location.reload(); }
    }).catch(function () {});
  }, every);
})();"""


def plotly_script(cdn: bool, served: bool = False) -> str:
    from plotly.offline import get_plotlyjs_version
    if served:
        return f'<script charset="utf-8" src="{SERVED_PLOTLY}"></script>'
    if not cdn:
        return f"<script>{plotly_js()}</script>"
    url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
    digest = base64.b64encode(hashlib.sha384(plotly_js().encode("utf-8")).digest()).decode()
    return f'<script charset="utf-8" src="{url}" integrity="sha384-{digest}" crossorigin="anonymous"></script>'


def _setting(value: Any) -> str:
    return "–" if value is None else str(value)


def _local(iso: str | None, tz: tzinfo | None) -> str:
    if not iso:
        return "–"
    return datetime.fromisoformat(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M %Z").strip()


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def header(meta: dict, tz: tzinfo | None) -> str:
    """The run's totals as cards, and its settings on one line."""
    e = escape
    best = meta["best"]
    seed = meta["seed"]
    sigma = meta["sigma"]
    cards = []
    if best:
        spread = f" ± {fmt.bpb(best['spread'])}" if best["spread"] is not None else ""
        note = " (σ of the seed)" if best["spread_is_sigma"] else f" (σ of its {best['n_evals']} evaluations)" \
            if best["spread"] is not None else ""
        gain = ""
        if best["improvement"] is not None:
            sig = f", {abs(best['improvement_sigmas']):.1f} σ" if best["improvement_sigmas"] is not None else ""
            gain = f"{fmt.delta(best['improvement'])} vs the seed{sig} · "
        confirmed = "confirmed" if best["confirmed"] else "single evaluation"
        cards.append(
            f'<div class="card best"><h3>Best · <a href="#c{best["number"]}" data-select="{best["i"]}">'
            f'#{best["number"]}</a> · {confirmed}</h3>'
            f'<div class="big">{fmt.bpb(best["val_bpb"])}<span class="sub">{e(spread)}{e(note)}</span></div>'
            f'<div class="sub">{e(gain)}{_plural(best["path_length"], "candidate")} on its path from the seed</div>'
            f'<div class="hyp">{e(best["hypothesis"] or "")}</div></div>')
    else:
        cards.append('<div class="card best"><h3>Best</h3><div class="big">–</div>'
                     '<div class="sub">no candidate evaluated and accepted yet</div></div>')
    out = meta["outcomes"]
    history = meta["history"]
    parts = [f"{out[o]:,} {o}" for o in ("accepted", "rejected", "failed", "pruned") if out[o]]
    in_flight = out["undecided"] + out["running"] + out["waiting"]
    if in_flight:
        parts.append(f"{in_flight:,} in flight")
    whole = [f"of {meta['candidates']:,} candidates: the seed"] if seed else [f"of {meta['candidates']:,} candidates"]
    if history["n"]:
        whole.append(f"{history['n']:,} imported ({history['kept']:,} kept)")
    cards.append(
        f'<div class="card"><h3>Children</h3><div class="big">{meta["children"]:,}</div>'
        f'<div class="sub">{" · ".join(parts) or "none decided yet"}</div>'
        f'<div class="sub">{e(", ".join(whole))}</div></div>')
    judged = meta["accepted"] + meta["rejected"]
    rate = f"{100 * meta['accepted'] / judged:.0f}% of {judged:,} judged children" if judged else "no child judged yet"
    cards.append(f'<div class="card"><h3>Accepted</h3><div class="big">{meta["accepted"]:,}</div>'
                 f'<div class="sub">{rate}</div></div>')
    cards.append(f'<div class="card"><h3>{meta["slot_kind"]}-hours</h3><div class="big">{meta["slot_hours"]:.2f}</div>'
                 f'<div class="sub">{meta["evaluations"]:,} evaluations on {len(meta["slots"])} slot(s) · '
                 f'{meta["active_hours"]:.2f} h of wall time · {fmt.busy(meta["busy"])}</div></div>')
    tokens = meta["llm_tokens_in"] + meta["llm_tokens_out"]
    cards.append(f'<div class="card"><h3>LLM cost</h3><div class="big">${meta["llm_cost"]:.2f}</div>'
                 f'<div class="sub">{meta["llm_calls"]:,} calls · {tokens / 1e6:.2f} M tokens'
                 + (f' · {meta["llm_errors"]} errors' if meta["llm_errors"] else "") + '</div></div>')
    noise = (f'<div class="big">{fmt.bpb(sigma)}</div><div class="sub">T0 {fmt.bpb(meta["temperature0"], missing="–")} · seed '
             f'{fmt.bpb(seed and seed["val_bpb"], missing="–")} (n={seed["n_evals"] if seed else 0})</div>') if sigma is not None \
        else '<div class="big">–</div><div class="sub">not measured yet</div>'
    cards.append(f'<div class="card"><h3>Noise σ</h3>{noise}</div>')

    temp = meta["temperature"]
    temp_text = f"{temp} (= 2σ)" if temp == "auto" else f"{temp}"
    budget = [f"{meta['hours']} h" if meta["hours"] else None,
              f"{meta['max_candidates']:,} children" if meta["max_candidates"] else None,
              f"${meta['max_cost']}" if meta["max_cost"] else None]
    items = [
        ("preset", meta["preset"]), ("operator", meta["operator"]), ("population", meta["population"]),
        ("temperature", f"{temp_text}, cooling {meta['cooling']}"), ("replicates", meta["replicates"]),
        ("confirm", "on" if meta["confirm"] else "off"), ("budget", " · ".join(b for b in budget if b) or "none"),
        ("models", ", ".join(meta["models"]) or "none"), ("slots", ", ".join(meta["slots"]) or "–"),
        ("started", _local(meta["created"], tz)), ("finished", _local(meta["finished"], tz) if meta["finished"] else "–"),
    ]
    config = "".join(f"<span><b>{e(k)}</b>{e(_setting(v))}</span>" for k, v in items)
    banner = ""
    if meta["live"]:
        age = meta["heartbeat_age"]
        beat = f" (heartbeat {age:.0f} s before this report)" if age is not None else ""
        again = (f"This page reloads itself within {meta['watch']:g} s of the run writing." if meta.get("watch")
                 else "Run <code>evo report</code> again for a fresh one, or <code>evo report --watch</code> for a page "
                      "that follows the run.")
        banner = (f'<div class="banner">This run is still going{e(beat)}: the report is a snapshot taken at '
                  f'{e(_local(meta["generated"], tz))}. {again}</div>')
    elif meta["status_note"]:  # stopped or unresponsive: nobody is running it, or nobody can tell
        banner = (f'<div class="banner warn">This run is {e(meta["status"].lower())}: {e(meta["status_note"])}.</div>')
    elif meta["status"] == FAILED:
        banner = '<div class="banner warn">This run failed: its seed cannot run here (see the seed\'s log tail below).</div>'
    noisy = meta.get("noisy") or []
    if noisy:
        shown = ", ".join(f'<a href="#c{n}">#{n}</a>' for n in noisy[:12]) + (f" and {len(noisy) - 12} more" if len(noisy) > 12 else "")
        banner += (f'<div class="banner warn">Noise: {_plural(len(noisy), "candidate")} ran while the machine\'s speed '
                   f'changed (replicates more than 2× apart in steps or tokens per second) or its load was above its '
                   f'cores: {shown}. A wall-clock budget then measures the machine as much as the code; discount '
                   f'their val_bpb (the ⚠ in their labels and details says why).</div>')
    return f'{banner}<div class="cards">{"".join(cards)}</div><div class="config">{config}</div>'


def section(key: str, title: str, hint: str, body: str, tabs: str = "") -> str:
    return (f'<section id="{key}"><header><h2>{escape(title)}</h2><span class="hint">{escape(hint)}</span>{tabs}'
            f'</header>{body}</section>')


def tabs(name: str, options: list[tuple[str, str]]) -> str:
    buttons = "".join(f'<button type="button" data-variant="{v}"{" class=on" if k == 0 else ""}>{escape(label)}</button>'
                      for k, (v, label) in enumerate(options))
    return f'<div class="tabs" data-for="{name}">{buttons}</div>'


def page(meta: dict, payload: str, chunks: list[str], cdn: bool, tz: tzinfo | None) -> str:
    """The whole HTML document. `payload` is the JSON the page's script reads (stored
    compressed, as the chunks of details are)."""
    name = escape(meta["name"])
    nav = "".join(f'<a href="#{k}">{escape(t)}</a>' for k, t in SECTIONS)
    figure = lambda key, variant=None: (f'<div class="fig" data-fig="{key}"'  # noqa: E731
                                        + (f' data-variant="{variant}"' if variant else "") + "></div>")
    body = [
        section("progress", "Progress",
                "val_bpb of every evaluated child and the seed (★); the running best as a step line, the temperature on "
                "the right axis, each improvement of the best labelled with its hypothesis; failed and pruned on the "
                "top row. A seeded run's imported history is on the candidate-number view. Click a point for details.",
                figure("progress", "time"),
                tabs("progress", [("time", "wall time"), ("number", "candidate number")])),
        section("lineage", "Lineage",
                "each candidate at its val_bpb (lower is better), joined to its parent (dotted: second parent). "
                "Filled green: accepted; hollow: rejected (grey), undecided (blue); the marker is the operator; failed "
                "(red) and pruned (yellow) on the top row; purple: imported history; the star is the seed. The thick line is the path from the seed to the best, its "
                "improvements labelled. Drag to zoom, double-click to reset, click a node for its diff.",
                figure("lineage", "generation"),
                tabs("lineage", [("generation", "by generation"), ("time", "by time")])),
        section("candidates", "Candidates", "click a column to sort, a row for details",
                '<div class="filters"><input type="search" id="f-text" placeholder="filter: words of the hypothesis, '
                'operator, state, reason, model, #number">'
                '<select id="f-state"><option value="">any outcome</option><option value="accepted">accepted</option>'
                '<option value="rejected">rejected</option><option value="failed">failed</option>'
                '<option value="pruned">pruned</option><option value="undecided">undecided</option>'
                '<option value="running">running</option><option value="waiting">waiting</option></select>'
                '<select id="f-op"><option value="">any operator</option></select>'
                '<label><input type="checkbox" id="f-path"> best path</label>'
                '<label><input type="checkbox" id="f-pop"> in population</label>'
                '<span class="count" id="t-count"></span></div>'
                '<div class="tscroll" id="t-scroll"><table><colgroup id="t-cols"></colgroup><thead id="t-head"></thead>'
                '<tbody id="t-body"></tbody></table></div>'),
        section("path", "Best path", "from the seed to the best, one diff per step",
                '<div class="steps" id="path-steps"></div>',
                '<div class="toolbar"><button type="button" id="path-open">expand all</button>'
                '<button type="button" id="path-close">collapse all</button></div>'),
        section("slots", "Slot timeline",
                "which slot ran what and when; pink: idle. The busy share of each slot is in its label.",
                figure("slots")),
        '<div class="grid2">'
        + section("acceptance", "Acceptance vs temperature",
                  "Metropolis decisions binned by T; the dotted line is what the rule promises for worse children",
                  figure("acceptance"))
        + section("failures", "Failures over time", "failed and pruned candidates by reason, and their share",
                  figure("failures"))
        + '</div>',
        section("curves", "Training curves", "training loss of each candidate on the best path (first evaluation) "
                "against the seed", figure("curves")),
    ]
    chunk_json = "[" + ",".join(f'"{c}"' for c in chunks) + "]"
    watched = live = ""
    if meta.get("watch"):
        watched = (f'\n<meta name="evo-revision" content="{escape(meta["revision"])}">'
                   f'\n<meta name="evo-watch" content="{meta["watch"]:g}">')
        live = f"\n<script>{LIVE_SCRIPT}</script>"
    generated = _local(meta["generated"], tz)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="evo {escape(__version__)}">{watched}
<title>evo report · {name}</title>
<style>{(ASSETS / "report.css").read_text()}</style>
{plotly_script(cdn, served=bool(meta.get("watch")))}
</head><body>
<div class="topbar"><span class="brand">evo report</span><span class="run">{name}</span>
<span class="badge {escape(meta['status'])}">{escape(meta['status'])}</span><nav>{nav}</nav></div>
<main>
{header(meta, tz)}
{''.join(body)}
<footer>made by evo {escape(__version__)} at {escape(generated)} from the archive; <code>evo report --name {name}</code>
makes it again</footer>
</main>
<aside class="drawer" id="drawer" aria-label="candidate details"><div class="dhead"><h2 id="d-title"></h2>
<button type="button" id="d-parent" title="parent">parent</button><button type="button" id="d-prev" title="previous (←)">←</button>
<button type="button" id="d-next" title="next (→)">→</button><button type="button" id="d-close" title="close (Esc)">✕</button></div>
<div class="dbody" id="d-body"></div></aside>
<script type="application/octet-stream" id="evo-data">{data.compress(payload)}</script>
<script type="application/json" id="evo-chunks">{chunk_json}</script>
<script>{(ASSETS / "report.js").read_text()}</script>{live}
</body></html>
"""

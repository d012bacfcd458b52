/* evo report: draws the figures, the candidate table, the details drawer and the best path from the
   data embedded in the page. No dependency but plotly.js; details (diffs, log tails) are stored
   zlib-compressed in chunks and inflated on demand with the browser's DecompressionStream. */
(function () {
  "use strict";
  window.evoReady = false;
  window.evoErrors = [];

  // zlib (deflate) + base64, as html.py stores the data and each chunk of details
  async function inflate(b64) {
    if (typeof DecompressionStream === "undefined") throw new Error("this browser cannot inflate the report's data (it lacks DecompressionStream: use a browser from 2023 or later)");
    var bin = atob(b64.trim()), bytes = new Uint8Array(bin.length);
    for (var j = 0; j < bin.length; j++) bytes[j] = bin.charCodeAt(j);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return JSON.parse(await new Response(stream).text());
  }
  function fatal(err) {
    window.evoErrors.push(String(err && err.message || err));
    var b = document.createElement("div");
    b.className = "banner warn";
    b.textContent = "The report cannot be shown: " + (err && err.message || err);
    document.querySelector("main").prepend(b);
    console.error(err);
  }
  inflate(document.getElementById("evo-data").textContent).then(report).catch(fatal);

function report(D) {
  var C = D.table;                       // columns, one entry per candidate position
  var N = C.number.length;
  var byNumber = new Map();
  for (var i = 0; i < N; i++) byNumber.set(C.number[i], i);
  var posOf = function (number) { return byNumber.has(number) ? byNumber.get(number) : -1; };
  var children = [];
  for (i = 0; i < N; i++) children.push([]);
  for (i = 0; i < N; i++) {
    var p = posOf(C.parent[i]);
    if (p >= 0 && C.parent[i] !== null) children[p].push(i);
  }
  // ----- small helpers ------------------------------------------------------------------------
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c !== null && c !== undefined) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  // val_bpb as evo/core/format.py writes it (its DECIMALS travel in the payload)
  function f6(v) { return v === null || v === undefined ? "–" : v.toFixed(D.bpb_decimals); }
  function fd(v) { return v === null || v === undefined ? "–" : (v > 0 ? "+" : "") + v.toFixed(D.bpb_decimals); }
  function fe(v) { return v === null || v === undefined ? "–" : v.toExponential(2); }
  function dur(s) {
    if (s === null || s === undefined) return "–";
    if (s < 90) return s.toFixed(0) + " s";
    if (s < 5400) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(2) + " h";
  }
  function money(v) { return v === null || v === undefined ? "–" : "$" + (v < 0.1 ? v.toFixed(4) : v.toFixed(2)); }
  function cls(v) { return v === null || v === undefined ? "" : v < 0 ? "good" : v > 0 ? "bad" : ""; }
  function candLink(number) {
    return el("a", {href: "#c" + number, onclick: function (ev) { ev.preventDefault(); select(posOf(number)); }, text: "#" + number});
  }
  function decisionText(i) {
    if (C.accepted[i] === null) return ["undecided", "running", "waiting"].indexOf(C.outcome[i]) >= 0 ? C.outcome[i] : "–";
    var t = C.role[i] === "history" ? (C.accepted[i] ? "kept" : "discarded") + " (imported)" : C.accepted[i] ? "accepted" : "rejected";
    if (C.probability[i] !== null && C.temperature[i] !== null) t += " · p " + C.probability[i].toFixed(2) + " · T " + fe(C.temperature[i]);
    return t;
  }

  // ----- details: compressed chunks, inflated on demand ----------------------------------------
  var chunkText = null, chunkCache = {};
  function chunk(k) {
    if (chunkCache[k]) return chunkCache[k];
    if (chunkText === null) chunkText = JSON.parse(document.getElementById("evo-chunks").textContent);
    chunkCache[k] = inflate(chunkText[k]);
    return chunkCache[k];
  }
  function details(i) {
    return chunk(Math.floor(i / D.chunk_size)).then(function (rows) { return rows[i % D.chunk_size]; });
  }
  window.evoDetails = details;

  // ----- diff rendering --------------------------------------------------------------------------
  var TOKEN = /(#.*$)|("""|'''|[rbfuRBFU]{0,2}"(?:[^"\\]|\\.)*"?|[rbfuRBFU]{0,2}'(?:[^'\\]|\\.)*'?)|\b(def|class)\b|\b(return|if|elif|else|for|while|in|import|from|as|with|try|except|finally|raise|lambda|and|or|not|is|None|True|False|pass|break|continue|yield|global|nonlocal|assert|del|async|await|self)\b|(\b\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?\b)/g;
  function highlight(parent, text) {
    var last = 0, m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(text)) !== null) {
      if (m[0] === "") { TOKEN.lastIndex++; continue; }
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      var c = m[1] ? "tk-com" : m[2] ? "tk-str" : m[3] ? "tk-def" : m[4] ? "tk-kw" : "tk-num";
      parent.appendChild(el("span", {cls: c, text: m[0]}));
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }
  function lineDiv(kind, sign, text, number, mark) {
    var d = el("div", {cls: "l " + kind});
    d.setAttribute("data-n", number === null ? "" : String(number));
    d.appendChild(document.createTextNode(sign));
    if (mark) {
      highlight(d, text.slice(0, mark[0]));
      var m = el("mark"); highlight(m, text.slice(mark[0], text.length - mark[1])); d.appendChild(m);
      highlight(d, text.slice(text.length - mark[1]));
    } else highlight(d, text);
    return d;
  }
  function changedSpan(a, b) {
    var p = 0, n = Math.min(a.length, b.length);
    while (p < n && a[p] === b[p]) p++;
    var s = 0;
    while (s < n - p && a[a.length - 1 - s] === b[b.length - 1 - s]) s++;
    return [[p, s], [p, s]];
  }
  var MAX_LINES = 2500;
  function renderDiff(text, limit) {
    var box = el("div", {cls: "diff"});
    if (!text) { box.appendChild(el("div", {cls: "l meta", text: " (no change to the code)"})); return box; }
    var lines = text.split("\n");
    if (lines.length && lines[lines.length - 1] === "") lines.pop();
    var oldN = 0, newN = 0, shown = 0, max = limit || MAX_LINES;
    for (var k = 0; k < lines.length; k++) {
      if (shown >= max) {
        var more = el("div", {cls: "more"}, [el("button", {text: "show " + (lines.length - k) + " more lines", onclick: function () {
          var full = renderDiff(text, lines.length + 1); box.replaceWith(full);
        }})]);
        box.appendChild(more);
        break;
      }
      var line = lines[k];
      if (line.slice(0, 3) === "---" || line.slice(0, 3) === "+++") { box.appendChild(el("div", {cls: "l file", text: line})); shown++; continue; }
      if (line.slice(0, 2) === "@@") {
        var m = /^@@ -(\d+)(?:,\d+)? \+(\d+)/.exec(line);
        if (m) { oldN = +m[1]; newN = +m[2]; }
        box.appendChild(el("div", {cls: "l hunk", text: line})); shown++; continue;
      }
      if (line[0] === "\\") { box.appendChild(el("div", {cls: "l meta", text: line})); shown++; continue; }
      if (line[0] === "-") {
        // a block of removed lines followed by as many added ones: mark what changed inside each line
        var j = k; while (j < lines.length && lines[j][0] === "-" && lines[j].slice(0, 3) !== "---") j++;
        var q = j; while (q < lines.length && lines[q][0] === "+" && lines[q].slice(0, 3) !== "+++") q++;
        var paired = (j - k) === (q - j) && (j - k) <= 50;
        for (var a = k; a < j; a++) {
          var marks = paired ? changedSpan(lines[a].slice(1), lines[j + a - k].slice(1)) : null;
          box.appendChild(lineDiv("del", "-", lines[a].slice(1), oldN++, marks && marks[0])); shown++;
        }
        for (var b = j; b < q; b++) {
          var mk = paired ? changedSpan(lines[k + b - j].slice(1), lines[b].slice(1)) : null;
          box.appendChild(lineDiv("add", "+", lines[b].slice(1), newN++, mk && mk[1])); shown++;
        }
        k = q - 1; continue;
      }
      if (line[0] === "+") { box.appendChild(lineDiv("add", "+", line.slice(1), newN++)); shown++; continue; }
      box.appendChild(lineDiv("ctx", " ", line.slice(1), newN)); oldN++; newN++; shown++;
    }
    return box;
  }
  function renderCode(text) {
    var box = el("div", {cls: "diff"}), lines = text.split("\n");
    var max = Math.min(lines.length, 4000);
    for (var k = 0; k < max; k++) box.appendChild(lineDiv("ctx", " ", lines[k], k + 1));
    if (max < lines.length) box.appendChild(el("div", {cls: "l meta", text: " … " + (lines.length - max) + " more lines"}));
    return box;
  }
  function diffStat(text) {
    var add = 0, del = 0;
    (text || "").split("\n").forEach(function (l) {
      if (l[0] === "+" && l.slice(0, 3) !== "+++") add++;
      else if (l[0] === "-" && l.slice(0, 3) !== "---") del++;
    });
    return el("span", {cls: "dstat"}, [el("span", {cls: "good", text: "+" + add}), " ", el("span", {cls: "bad", text: "−" + del})]);
  }

  // ----- the details drawer ------------------------------------------------------------------------
  var drawer = document.getElementById("drawer");
  var dtitle = document.getElementById("d-title");
  var dbody = document.getElementById("d-body");
  var current = -1;
  function kv(pairs) {
    var dl = el("dl", {cls: "kv"});
    pairs.forEach(function (p) { if (p) { dl.appendChild(el("dt", {text: p[0]})); dl.appendChild(el("dd", null, [].concat(p[1]))); } });
    return dl;
  }
  function select(i) {
    if (i === null || i === undefined || i < 0 || i >= N) return;
    current = i;
    var number = C.number[i];
    if (location.hash !== "#c" + number) history.replaceState(null, "", "#c" + number);
    drawer.classList.add("open");
    drawer.setAttribute("data-candidate", String(number));
    dtitle.textContent = "#" + number + " · " + C.operator[i] + " · " + C.outcome[i];
    dbody.textContent = "";
    var spread = C.std[i] !== null ? C.std[i] : D.meta.sigma;
    var parents = [];
    if (C.parent[i] !== null) parents.push(candLink(C.parent[i]));
    if (C.parent2[i] !== null) { parents.push(" and "); parents.push(candLink(C.parent2[i])); }
    var kids = children[i].slice(0, 40).reduce(function (acc, c, k) { if (k) acc.push(" "); acc.push(candLink(C.number[c])); return acc; }, []);
    if (children[i].length > 40) kids.push(" … " + (children[i].length - 40) + " more");
    var valText = C.val_bpb[i] !== null ? f6(C.val_bpb[i]) + (C.std[i] !== null ? " ± " + f6(C.std[i]) + "  (n=" + C.n_evals[i] + ")"
        : "  (n=" + C.n_evals[i] + (spread !== null && spread !== undefined ? "; noise σ of the run " + f6(spread) : "") + ")")
      : C.imported[i] !== null ? f6(C.imported[i]) + " (imported, measured elsewhere)" : "–";
    var deltaNode = el("span", {cls: cls(C.delta[i]), text: fd(C.delta[i])});
    dbody.appendChild(el("div", {cls: "hyp-title", text: C.hypothesis[i] || "(no hypothesis)"}));
    dbody.appendChild(kv([
      ["state", C.state[i] + (C.fail_reason[i] ? " (" + C.fail_reason[i] + ")" : "") + (i === D.best ? "  ★ best" : "") + (C.on_path[i] && i !== D.best ? "  · on the path to the best" : "") + (C.in_population[i] ? "  · in the population" : "")],
      ["val_bpb", valText],
      C.steps[i] !== null ? ["speed", C.steps[i].toLocaleString("en") + " steps" + (C.tok_s[i] ? " · " + C.tok_s[i].toLocaleString("en") + " tok/s (first evaluation)" : "")] : null,
      C.warnings[i].length ? ["noise", el("span", {cls: "warnline", text: "⚠ " + C.warnings[i].join("; ⚠ ")})] : null,
      ["Δ vs parent", deltaNode],
      ["decision", decisionText(i)],
      ["parents", parents.length ? parents : "none (a root)"],
      ["children", kids.length ? kids : "none"],
      ["generation", String(C.generation[i])],
      ["slot time", dur(C.duration[i])],
      C.model[i] ? ["model", C.model[i] + (C.cost[i] !== null ? " · " + money(C.cost[i]) : "")] : null,
      ["more", el("code", {text: "evo show " + number + " --name " + D.meta.name})],
    ]));
    var slot = el("div", null, [el("div", {cls: "empty", text: "loading details…"})]);
    dbody.appendChild(slot);
    details(i).then(function (d) {
      if (current !== i) return;
      slot.textContent = "";
      if (d.rationale) { slot.appendChild(el("h4", {text: "rationale"})); slot.appendChild(el("div", {cls: "rationale", text: d.rationale})); }
      if (d.detail) { slot.appendChild(el("h4", {text: "what went wrong"})); slot.appendChild(el("div", {cls: "rationale", text: d.detail})); }
      if (d.calls && d.calls.length) {
        slot.appendChild(el("h4", {text: "LLM calls"}));
        slot.appendChild(table(["model", "purpose", "tokens in", "out", "latency", "cost", "error"], d.calls.map(function (c) {
          return [c.model, c.purpose, c.in, c.out, dur(c.latency), money(c.cost), c.error || ""]; })));
      }
      if (d.evals && d.evals.length) {
        slot.appendChild(el("h4", {text: "evaluations"}));
        slot.appendChild(table(["rep", "seed", "slot", "state", "val_bpb", "wall", "steps", "tok/s", "load", "peak VRAM", "MFU"], d.evals.map(function (e) {
          return [e.replicate, e.seed, e.slot || "–", e.state + (e.fail_reason ? " (" + e.fail_reason + ")" : ""), f6(e.val_bpb), dur(e.wall),
                  e.steps === null ? "–" : e.steps, e.tok_s ? Math.round(e.tok_s).toLocaleString("en") : "–",
                  e.load === null || e.load === undefined ? "–" : e.load.toFixed(1) + (e.cores ? " / " + e.cores : ""),
                  e.vram === null ? "–" : (e.vram / 1024).toFixed(1) + " GB", e.mfu === null ? "–" : e.mfu.toFixed(1) + "%"]; })));
      }
      if (d.vs !== null) {
        var h = el("h4", null, ["diff vs parent #" + d.vs]); h.appendChild(diffStat(d.diff));
        slot.appendChild(h);
        slot.appendChild(renderDiff(d.diff));
        if (d.vs2 !== null) slot.appendChild(el("div", {cls: "hint", text: "second parent: #" + d.vs2 + " (its contribution is in the diff above)"}));
      } else if (d.code !== undefined) {
        slot.appendChild(el("h4", {text: "code (no parent)"}));
        slot.appendChild(renderCode(d.code));
      }
      slot.appendChild(el("h4", {text: "log tail" + (d.log_replicate !== null ? " (evaluation " + d.log_replicate + ")" : "")}));
      slot.appendChild(d.log ? el("pre", {cls: "log", text: d.log}) : el("div", {cls: "empty", text: "no log recorded"}));
    }).catch(function (err) {
      slot.textContent = "";
      slot.appendChild(el("div", {cls: "banner warn", text: "cannot show details: " + err.message}));
    });
    markRow();
  }
  window.evoSelect = select;
  function table(head, rows) {
    var t = el("table", {cls: "evals"});
    t.appendChild(el("tr", null, head.map(function (h) { return el("th", {text: h}); })));
    rows.forEach(function (r) { t.appendChild(el("tr", null, r.map(function (v) { return el("td", {text: String(v)}); }))); });
    return t;
  }
  function closeDrawer() { drawer.classList.remove("open"); current = -1; history.replaceState(null, "", location.pathname + location.search); markRow(); }
  document.getElementById("d-close").addEventListener("click", closeDrawer);
  document.getElementById("d-prev").addEventListener("click", function () { if (current > 0) select(current - 1); });
  document.getElementById("d-next").addEventListener("click", function () { if (current >= 0 && current < N - 1) select(current + 1); });
  document.getElementById("d-parent").addEventListener("click", function () { if (current >= 0 && C.parent[current] !== null) select(posOf(C.parent[current])); });
  document.addEventListener("keydown", function (ev) {
    if (ev.target && /INPUT|SELECT|TEXTAREA/.test(ev.target.tagName)) return;
    if (ev.key === "Escape" && current >= 0) closeDrawer();
    else if (current >= 0 && (ev.key === "ArrowRight" || ev.key === "j")) document.getElementById("d-next").click();
    else if (current >= 0 && (ev.key === "ArrowLeft" || ev.key === "k")) document.getElementById("d-prev").click();
  });

  // ----- figures -----------------------------------------------------------------------------------
  var webgl = (function () {
    try { var c = document.createElement("canvas"); return !!(c.getContext("webgl") || c.getContext("experimental-webgl")); }
    catch (e) { return false; }
  })();
  function prepare(fig) {
    var data = fig.data.map(function (t) {
      var u = Object.assign({}, t);
      if (u.type === "scattergl" && !webgl) u.type = "scatter";
      if (u.meta === "hover" && u.customdata) u.text = u.customdata.map(function (k) { return k >= 0 ? D.hover[k] : ""; });
      return u;
    });
    return {data: data, layout: Object.assign({autosize: true}, fig.layout)};
  }
  var PLOT_CONFIG = {responsive: true, displaylogo: false, scrollZoom: false,
                     modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"],
                     toImageButtonOptions: {format: "png", scale: 2, filename: "evo-" + D.meta.name}};
  function draw(div, fig) {
    var f = prepare(fig);
    return Plotly.react(div, f.data, f.layout, PLOT_CONFIG).then(function () {
      if (!div._evoClick) {
        div._evoClick = true;
        div.on("plotly_click", function (ev) {
          var pt = ev && ev.points && ev.points[0];
          if (pt && pt.customdata !== undefined && pt.customdata !== null && typeof pt.customdata === "number" && pt.customdata >= 0) select(pt.customdata);
        });
      }
    });
  }
  function variants(name) {
    var div = document.querySelector('.fig[data-fig="' + name + '"]');
    var tabs = document.querySelector('.tabs[data-for="' + name + '"]');
    if (tabs) tabs.querySelectorAll("button").forEach(function (b) {
      b.addEventListener("click", function () {
        tabs.querySelectorAll("button").forEach(function (x) { x.classList.toggle("on", x === b); });
        var v = b.getAttribute("data-variant");
        div.setAttribute("data-variant", v);
        draw(div, D.figures[name + ":" + v]);
      });
    });
    return function () { return draw(div, D.figures[name + ":" + div.getAttribute("data-variant")] || D.figures[name]); };
  }

  // ----- candidate table (virtual rows) ---------------------------------------------------------------
  var COLS = [
    {key: "number", label: "#", w: 56, num: true},
    {key: "parent", label: "parents", w: 86, num: true, fmt: function (i) { return C.parent[i] === null ? "–" : "#" + C.parent[i] + (C.parent2[i] !== null ? " #" + C.parent2[i] : ""); }},
    {key: "operator", label: "operator", w: 86},
    {key: "hypothesis", label: "hypothesis", w: null, fmt: function (i) { return C.hypothesis[i]; }},
    {key: "state", label: "state", w: 120, html: function (i, td) {
      td.appendChild(el("span", {cls: "st " + C.outcome[i], text: C.state[i] === "COMPLETE" ? C.outcome[i] : C.state[i].toLowerCase() + (C.fail_reason[i] ? " · " + C.fail_reason[i] : "")}));
    }},
    {key: "val_bpb", label: "val_bpb", w: 150, num: true, fmt: function (i) {
      if (C.val_bpb[i] === null) return C.imported[i] !== null ? f6(C.imported[i]) + "*" : "–";
      return f6(C.val_bpb[i]) + (C.std[i] !== null ? " ± " + f6(C.std[i]) : "") + (i === D.best ? " ★" : "");
    }},
    {key: "steps", label: "steps", w: 84, num: true, title: "steps of the first evaluation; ⚠: noise warning (details)",
     fmt: function (i) { return (C.steps[i] === null ? "–" : C.steps[i].toLocaleString("en")) + (C.warnings[i].length ? " ⚠" : ""); }},
    {key: "delta", label: "Δ parent", w: 96, num: true, html: function (i, td) { td.textContent = fd(C.delta[i]); td.className += " " + cls(C.delta[i]); }},
    {key: "accepted", label: "decision", w: 190, fmt: decisionText, sort: function (i) { return C.accepted[i] === null ? null : (C.accepted[i] ? 1 : 0) + (C.probability[i] || 0) / 10; }},
    {key: "duration", label: "slot time", w: 80, num: true, fmt: function (i) { return dur(C.duration[i]); }},
    {key: "model", label: "model", w: 130, fmt: function (i) { return C.model[i] || "–"; }},
    {key: "cost", label: "cost", w: 70, num: true, fmt: function (i) { return money(C.cost[i]); }},
  ].filter(function (c) {   // a column with nothing in it (no LLM: model, cost) leaves its room to the hypothesis
    return !(c.key === "model" || c.key === "cost" || c.key === "steps") || C[c.key].some(function (v) { return v !== null; });
  });
  var ROW_H = 28;
  var tscroll = document.getElementById("t-scroll");
  var tbody = document.getElementById("t-body");
  var thead = document.getElementById("t-head");
  var tcount = document.getElementById("t-count");
  var order = [], sortKey = "number", sortDesc = false;
  function buildHead() {
    var cg = document.getElementById("t-cols");
    COLS.forEach(function (c) { cg.appendChild(el("col", c.w ? {style: "width:" + c.w + "px"} : null)); });
    var tr = el("tr");
    COLS.forEach(function (c) {
      var th = el("th", {cls: c.num ? "num" : "", text: c.label, title: (c.title ? c.title + "; " : "") + "sort by " + c.label, "data-key": c.key});
      th.addEventListener("click", function () {
        if (sortKey === c.key) sortDesc = !sortDesc; else { sortKey = c.key; sortDesc = false; }
        applyFilter();
      });
      tr.appendChild(th);
    });
    thead.appendChild(tr);
  }
  function sortValue(col, i) {
    if (col.sort) return col.sort(i);
    var v = C[col.key][i];
    return v === undefined ? null : v;
  }
  function applyFilter() {
    var q = document.getElementById("f-text").value.trim().toLowerCase();
    var st = document.getElementById("f-state").value;
    var op = document.getElementById("f-op").value;
    var onlyPath = document.getElementById("f-path").checked;
    var onlyPop = document.getElementById("f-pop").checked;
    var terms = q ? q.split(/\s+/) : [];
    order = [];
    for (var i = 0; i < N; i++) {
      if (st && C.outcome[i] !== st) continue;
      if (op && C.operator[i] !== op) continue;
      if (onlyPath && !C.on_path[i]) continue;
      if (onlyPop && !C.in_population[i]) continue;
      if (terms.length) {
        var hay = ("#" + C.number[i] + " " + C.operator[i] + " " + C.hypothesis[i] + " " + C.state[i] + " " + (C.fail_reason[i] || "") + " " + (C.model[i] || "") + " " + C.outcome[i]).toLowerCase();
        var ok = true;
        for (var t = 0; t < terms.length; t++) if (hay.indexOf(terms[t]) < 0) { ok = false; break; }
        if (!ok) continue;
      }
      order.push(i);
    }
    var col = COLS.filter(function (c) { return c.key === sortKey; })[0];
    var keyed = order.map(function (i) { return [sortValue(col, i), i]; });
    keyed.sort(function (a, b) {
      var x = a[0], y = b[0];
      if (x === null && y === null) return a[1] - b[1];
      if (x === null) return 1;
      if (y === null) return -1;
      var r = typeof x === "string" ? x.localeCompare(y) : x - y;
      if (sortDesc) r = -r;
      return r || a[1] - b[1];
    });
    order = keyed.map(function (p) { return p[1]; });
    thead.querySelectorAll("th").forEach(function (th) {
      th.classList.toggle("sorted", th.getAttribute("data-key") === sortKey);
      th.classList.toggle("desc", th.getAttribute("data-key") === sortKey && sortDesc);
    });
    tcount.textContent = "showing " + order.length.toLocaleString() + " of " + N.toLocaleString();
    tscroll.scrollTop = 0;
    renderRows();
  }
  var renderPending = false;
  function renderRows() {
    renderPending = false;
    var top = tscroll.scrollTop, height = tscroll.clientHeight || 520;
    var first = Math.max(0, Math.floor(top / ROW_H) - 10);
    var last = Math.min(order.length, Math.ceil((top + height) / ROW_H) + 10);
    tbody.textContent = "";
    var padTop = el("tr", {cls: "pad"}, [el("td", {colspan: String(COLS.length), style: "height:" + (first * ROW_H) + "px"})]);
    tbody.appendChild(padTop);
    for (var r = first; r < last; r++) {
      var i = order[r];
      var tr = el("tr", {cls: "row" + (i === current ? " sel" : ""), "data-i": String(i)});
      COLS.forEach(function (c) {
        var td = el("td", {cls: c.num ? "num" : ""});
        if (c.html) c.html(i, td); else td.textContent = c.fmt ? c.fmt(i) : String(C[c.key][i] === null ? "–" : C[c.key][i]);
        if (c.key === "hypothesis" || c.key === "accepted" || c.key === "model" || c.key === "val_bpb") td.title = td.textContent;
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    }
    tbody.appendChild(el("tr", {cls: "pad"}, [el("td", {colspan: String(COLS.length), style: "height:" + ((order.length - last) * ROW_H) + "px"})]));
  }
  function markRow() {
    tbody.querySelectorAll("tr.row").forEach(function (tr) { tr.classList.toggle("sel", +tr.getAttribute("data-i") === current); });
  }
  tscroll.addEventListener("scroll", function () { if (!renderPending) { renderPending = true; requestAnimationFrame(renderRows); } });
  tbody.addEventListener("click", function (ev) {
    var tr = ev.target.closest("tr.row");
    if (tr) select(+tr.getAttribute("data-i"));
  });
  ["f-text", "f-state", "f-op", "f-path", "f-pop"].forEach(function (id) {
    var e = document.getElementById(id);
    var timer = null;
    e.addEventListener(id === "f-text" ? "input" : "change", function () { clearTimeout(timer); timer = setTimeout(applyFilter, id === "f-text" ? 120 : 0); });
  });
  (function fillOps() {
    var ops = Array.from(new Set(C.operator)).sort(), sel = document.getElementById("f-op");
    ops.forEach(function (o) { sel.appendChild(el("option", {value: o, text: o})); });
  })();

  // ----- best path as a sequence of diffs ---------------------------------------------------------------
  function renderPath() {
    var box = document.getElementById("path-steps");
    if (!D.path.length) { box.appendChild(el("div", {cls: "empty", text: "no best candidate yet"})); return Promise.resolve(); }
    var jobs = D.path.map(function (i, k) {
      var step = el("div", {cls: "step", "data-i": String(i)});
      var head = el("div", {cls: "shead"}, [
        el("a", {cls: "n", href: "#c" + C.number[i], text: "#" + C.number[i], onclick: function (ev) { ev.preventDefault(); select(i); }}),
        el("span", {text: C.operator[i]}),
        el("span", {text: C.val_bpb[i] !== null ? "val_bpb " + f6(C.val_bpb[i]) : C.imported[i] !== null ? "val_bpb " + f6(C.imported[i]) + " (imported)" : ""}),
        el("span", {cls: cls(C.delta[i]), text: C.delta[i] !== null ? "Δ " + fd(C.delta[i]) : ""}),
        el("span", {cls: "hint", text: decisionText(i)}),
      ]);
      step.appendChild(head);
      step.appendChild(el("div", {cls: "hyp-title", text: (i === D.best ? "★ " : "") + (C.hypothesis[i] || "")}));
      var det = el("details", k > 0 ? {open: ""} : null);
      det.appendChild(el("summary", {text: k === 0 ? "code of the root" : "diff vs #" + C.number[D.path[k - 1]]}));
      step.appendChild(det);
      box.appendChild(step);
      return details(i).then(function (d) {
        if (d.vs !== null) { det.querySelector("summary").appendChild(diffStat(d.diff)); det.appendChild(renderDiff(d.diff)); }
        else if (d.code !== undefined) det.appendChild(renderCode(d.code));
      });
    });
    document.getElementById("path-open").addEventListener("click", function () { box.querySelectorAll("details").forEach(function (d) { d.open = true; }); });
    document.getElementById("path-close").addEventListener("click", function () { box.querySelectorAll("details").forEach(function (d) { d.open = false; }); });
    return Promise.all(jobs);
  }

  // ----- start -----------------------------------------------------------------------------------------
  buildHead();
  applyFilter();
  var pathDone = renderPath().catch(function (err) {
    document.getElementById("path-steps").appendChild(el("div", {cls: "banner warn", text: "cannot show the path's diffs: " + err.message}));
  });
  if (typeof Plotly === "undefined") {
    document.querySelectorAll(".fig").forEach(function (div) {
      div.appendChild(el("div", {cls: "banner warn", text: "plotly.js did not load (a report made with --cdn needs the network): the figures cannot be drawn. Make the report without --cdn to open it offline."}));
    });
    pathDone.then(function () { window.evoReady = true; });
  } else {
    var drawers = [];
    document.querySelectorAll(".fig").forEach(function (div) {
      var name = div.getAttribute("data-fig");
      drawers.push(div.hasAttribute("data-variant") ? variants(name) : function () { return draw(div, D.figures[name]); });
    });
    // one figure per task, so the page stays responsive while a large run draws
    var chain = Promise.resolve();
    drawers.forEach(function (f) {
      chain = chain.then(function () { return new Promise(function (res) { setTimeout(res, 0); }); }).then(f)
        .catch(function (err) { window.evoErrors.push(String(err && err.message || err)); console.error(err); });
    });
    Promise.all([chain, pathDone]).then(function () { window.evoReady = true; });
  }
  function fromHash() {
    var m = /^#c(\d+)$/.exec(location.hash);
    if (m && posOf(+m[1]) !== current) select(posOf(+m[1]));
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
}
})();

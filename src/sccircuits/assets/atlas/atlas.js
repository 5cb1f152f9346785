/* sccircuits atlas: search, feature cards, edges and neighbourhood graphs over the embedded run data.
 * The data (JSON in #atlas-data) is built by sccircuits.atlas; this script only displays it.
 * Views are addressed by the URL hash: #f=<feature index>, #q=<query>, #consensus, #overview. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("atlas-data").textContent);
  var F = D.features, E = D.edges;
  var nF = F.id.length, nE = E.s.length;
  var MAX_RESULTS = 100, MAX_ROWS = 100, HOP1_CAP = 30, HOP2_CAP = 6, MAX_NODES = 120;

  // ------------------------------------------------------------------ helpers
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "";
    if (typeof v !== "number") return esc(v);
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    return String(+v.toPrecision(digits || 3));
  }
  function pct(v) { return v === null || v === undefined ? "" : (100 * v).toPrecision(3) + "%"; }
  function el(id) { return document.getElementById(id); }
  function featureName(i) { return "L" + F.layer[i] + ":F" + F.id[i]; }
  function runName(i) { return D.runs[F.run[i]].name; }
  function labelOf(i) { return F.label[i] < 0 ? "unannotated" : D.terms[F.label[i]][1]; }
  function featureLink(i) {
    return "<a href='#f=" + i + "' class='flink' data-f='" + i + "'>" + esc(featureName(i)) + "</a>";
  }

  // ------------------------------------------------------------------ adjacency (CSR, built once)
  var adj = null;
  function adjacency() {
    if (adj) return adj;
    function csr(from) {
      var start = new Int32Array(nF + 1), i;
      for (i = 0; i < nE; i++) start[from[i] + 1]++;
      for (i = 0; i < nF; i++) start[i + 1] += start[i];
      var fill = start.slice(0, nF), idx = new Int32Array(nE);
      for (i = 0; i < nE; i++) idx[fill[from[i]]++] = i;
      return { start: start, idx: idx };
    }
    adj = { out: csr(E.s), inn: csr(E.t) };
    return adj;
  }
  function edgesOf(i, dir) {
    var a = adjacency()[dir], out = [];
    for (var k = a.start[i]; k < a.start[i + 1]; k++) out.push(a.idx[k]);
    return out;
  }
  function byAbsD(a, b) { return Math.abs(E.d[b]) - Math.abs(E.d[a]) || a - b; }

  // ------------------------------------------------------------------ search
  var geneIdx = null, termIdx = null, geneLower = null;
  function searchIndex() {
    if (geneIdx) return;
    geneIdx = new Map(); termIdx = new Map();
    geneLower = D.genes.map(function (g) { return g.toLowerCase(); });
    for (var i = 0; i < nF; i++) {
      var gs = F.genes[i], k;
      for (k = 0; k < gs.length; k++) {
        if (!geneIdx.has(gs[k])) geneIdx.set(gs[k], []);
        geneIdx.get(gs[k]).push([i, k]);
      }
      var ts = F.terms[i];
      for (k = 0; k < ts.length; k++) {
        if (!termIdx.has(ts[k])) termIdx.set(ts[k], []);
        termIdx.get(ts[k]).push([i, F.term_q[i][k]]);
      }
      if (F.label[i] >= 0 && ts.indexOf(F.label[i]) < 0) {
        if (!termIdx.has(F.label[i])) termIdx.set(F.label[i], []);
        termIdx.get(F.label[i]).push([i, F.label_q[i]]);
      }
    }
  }
  var FEATURE_RE = /^(?:l(?:ayer)?\s*)?(\d+)\s*[:\/ ,]\s*(?:f(?:eature)?\s*)?(\d+)$/i;

  // Results: [{f, why}], best first. Exact gene symbols first (features ranked by the gene's place
  // in their top-gene list, then its count), then gene prefixes, then terms, then feature ids.
  function search(query) {
    searchIndex();
    var q = query.trim().toLowerCase(), out = [], seen = new Set();
    if (!q) return out;
    function add(f, why) { if (!seen.has(f)) { seen.add(f); out.push({ f: f, why: why }); } }
    var m = FEATURE_RE.exec(q);
    if (m) {
      var L = +m[1], id = +m[2];
      for (var i = 0; i < nF; i++) if (F.layer[i] === L && F.id[i] === id) add(i, "feature id");
    }
    var exact = [], prefix = [];
    for (var g = 0; g < geneLower.length; g++) {
      if (geneLower[g] === q) exact.push(g);
      else if (q.length >= 2 && geneLower[g].lastIndexOf(q, 0) === 0) prefix.push(g);
    }
    function addGene(g, kind) {
      var hits = (geneIdx.get(g) || []).slice();
      hits.sort(function (a, b) {
        return a[1] - b[1] || (F.gene_counts[b[0]][b[1]] || 0) - (F.gene_counts[a[0]][a[1]] || 0) || a[0] - b[0];
      });
      hits.forEach(function (h) {
        add(h[0], kind + " gene " + D.genes[g] + " (#" + (h[1] + 1) + ", count " + fmt(F.gene_counts[h[0]][h[1]]) + ")");
      });
    }
    exact.forEach(function (g) { addGene(g, "top"); });
    prefix.slice(0, 20).forEach(function (g) { addGene(g, "top"); });
    if (q.length >= 3) {
      for (var t = 0; t < D.terms.length; t++) {
        var term = D.terms[t];
        if (term[0].toLowerCase() === q || term[1].toLowerCase().indexOf(q) >= 0) {
          var hits = (termIdx.get(t) || []).slice().sort(function (a, b) { return (a[1] || 1) - (b[1] || 1) || a[0] - b[0]; });
          hits.forEach(function (h) { add(h[0], "term " + term[0] + " " + term[1] + " (q " + fmt(h[1], 2) + ")"); });
        }
      }
    }
    return out;
  }

  function showResults(query) {
    var res = search(query), box = el("results");
    if (!query.trim()) { box.innerHTML = ""; return; }
    if (!res.length) { box.innerHTML = "<p class='na'>No embedded feature matches “" + esc(query) + "”.</p>"; return; }
    var html = ["<p class='count'>" + res.length.toLocaleString("en-US") + " feature" + (res.length > 1 ? "s" : "") + "</p><ol>"];
    res.slice(0, MAX_RESULTS).forEach(function (r) {
      html.push("<li class='result' data-f='" + r.f + "'><span class='fid'>" + esc(featureName(r.f)) + "</span> <span class='run'>" +
        esc(runName(r.f)) + "</span><br><span class='lab'>" + esc(labelOf(r.f)) + "</span><br><span class='why'>" + esc(r.why) + "</span></li>");
    });
    html.push("</ol>");
    if (res.length > MAX_RESULTS) html.push("<p class='na'>" + (res.length - MAX_RESULTS).toLocaleString("en-US") + " more: refine the search.</p>");
    box.innerHTML = html.join("");
  }

  // ------------------------------------------------------------------ feature card
  function nullRow(run, s, t) {
    var rows = D.runs[run].null;
    for (var i = 0; i < rows.length; i++) if (rows[i].s === s && rows[i].t === t) return rows[i];
    return null;
  }
  var EDGE_COLS = [
    ["feature", null], ["label", null], ["d", function (e) { return E.d[e]; }],
    ["|d| / null", function (e) { return E.sp[e]; }], ["q", function (e) { return E.q[e]; }],
    ["consistency", function (e) { return E.c[e]; }], ["cells", function (e) { return E.n[e]; }], ["in cap", null]
  ];
  var tableState = {};

  function edgeTable(key, edges, other) {
    var st = tableState[key] || (tableState[key] = { col: 2, desc: null, all: false });
    var get = EDGE_COLS[st.col][1], list = edges.slice();
    list.sort(function (a, b) {
      var x = get(a), y = get(b);
      if (x === null) return 1; if (y === null) return -1;
      if (st.desc === null) { x = Math.abs(x); y = Math.abs(y); return y - x || a - b; } // default: |d| descending
      return (st.desc ? y - x : x - y) || a - b;
    });
    var head = EDGE_COLS.map(function (c, j) {
      var mark = j === st.col && st.desc !== null ? (st.desc ? " ▼" : " ▲") : (j === st.col ? " (|d| ▼)" : "");
      return c[1] ? "<th class='sortable' data-table='" + key + "' data-col='" + j + "'>" + esc(c[0]) + mark + "</th>" : "<th>" + esc(c[0]) + "</th>";
    }).join("");
    var shown = st.all ? list : list.slice(0, MAX_ROWS);
    var body = shown.map(function (e) {
      var o = other(e);
      return "<tr data-e='" + e + "'><td>" + featureLink(o) + "</td><td>" + esc(labelOf(o)) + "</td><td class='num " + (E.d[e] < 0 ? "neg" : "pos") + "'>" +
        fmt(E.d[e]) + "</td><td class='num'>" + fmt(E.sp[e]) + "</td><td class='num'>" + fmt(E.q[e], 2) + "</td><td class='num'>" +
        fmt(E.c[e]) + "</td><td class='num'>" + fmt(E.n[e]) + "</td><td>" + (E.cap[e] ? "yes" : "") + "</td></tr>";
    }).join("");
    var more = list.length > shown.length ? "<button class='more' data-table='" + key + "'>show all " + list.length.toLocaleString("en-US") + "</button>" : "";
    return "<table class='t edges' id='" + key + "'><thead><tr>" + head + "</tr></thead><tbody>" + body + "</tbody></table>" + more;
  }

  function nullContext(i, outs, ins) {
    var pairs = new Map();
    outs.concat(ins).forEach(function (e) {
      var k = F.layer[E.s[e]] + ">" + F.layer[E.t[e]];
      if (!pairs.has(k)) pairs.set(k, []);
      pairs.get(k).push(Math.abs(E.d[e]));
    });
    if (!pairs.size) return "";
    var rows = [];
    Array.from(pairs.keys()).sort().forEach(function (k) {
      var st = k.split(">").map(Number), n = nullRow(F.run[i], st[0], st[1]), v = pairs.get(k).sort(function (a, b) { return a - b; });
      rows.push("<tr><td>" + st[0] + " → " + st[1] + "</td><td class='num'>" + v.length + "</td><td class='num'>" + fmt(v[Math.floor(v.length / 2)]) +
        "</td><td class='num'>" + (n ? fmt(n.q95) : "") + "</td><td class='num'>" + (n ? fmt(n.q99) : "") + "</td><td class='num'>" +
        (n && n.frac_passing !== null ? pct(n.frac_passing) : "") + "</td></tr>");
    });
    return "<h3>Real vs null |d|</h3><p class='note'>Null: a random direction of the same norm ablated at the same positions " +
      "(all null tests of these layers). “|d| / null” in the edge tables is |d| over the null's 99th percentile.</p>" +
      "<table class='t'><thead><tr><th>layers</th><th>edges here</th><th>median |d| here</th><th>null |d| 95%</th><th>null |d| 99%</th>" +
      "<th>null tests passing the edge rule</th></tr></thead><tbody>" + rows.join("") + "</tbody></table>";
  }

  function card(i) {
    var run = D.runs[F.run[i]], L = F.layer[i], h = [];
    h.push("<h2 id='card-title'>" + esc(run.name) + " · layer " + L + " · feature " + F.id[i] + "</h2>");
    var lab = F.label[i] >= 0 ? D.terms[F.label[i]] : null;
    h.push("<p class='label' id='card-label'>" + (lab ? esc(lab[1]) + " <span class='tid'>" + esc(lab[0]) + "</span>" +
      (F.label_q[i] !== null ? " <span class='q'>q = " + fmt(F.label_q[i], 2) + "</span>" : "") : "<span class='na'>unannotated</span>") + "</p>");
    var sae = run.sae[L] || null;
    h.push("<table class='t kv' id='card-stats'><tr><th>model</th><td>" + esc(run.model) + "</td></tr>" +
      "<tr><th>activation frequency</th><td>" + (F.freq[i] === null ? "" : pct(F.freq[i]) + " of positions") + "</td></tr>" +
      "<tr><th>fire count</th><td>" + fmt(F.fires[i]) + "</td></tr>" +
      "<tr><th>SAE of layer " + L + "</th><td>" + (sae ? "variance explained " + pct(sae.variance_explained) + ", L0 " + fmt(sae.l0) +
        ", dead " + pct(sae.dead_fraction) + " of " + fmt(sae.d_sae) + " latents" : "<span class='na'>not recorded</span>") + "</td></tr></table>");
    // top genes
    var gs = F.genes[i];
    h.push("<h3>Top genes</h3>");
    if (gs.length) {
      h.push("<table class='t' id='card-genes'><thead><tr><th>#</th><th>gene</th><th>count</th><th>mean activation</th></tr></thead><tbody>" +
        gs.map(function (g, k) {
          return "<tr><td>" + (k + 1) + "</td><td><a href='#q=" + encodeURIComponent(D.genes[g]) + "'>" + esc(D.genes[g]) + "</a></td><td class='num'>" +
            fmt(F.gene_counts[i][k]) + "</td><td class='num'>" + fmt(F.gene_means[i][k]) + "</td></tr>";
        }).join("") + "</tbody></table>");
    } else h.push("<p class='na'>no top genes (not annotated, or no gene reached the minimum count)</p>");
    // terms
    h.push("<h3>Enriched terms</h3>");
    if (F.terms[i].length) {
      h.push("<table class='t' id='card-terms'><thead><tr><th>term</th><th>name</th><th>library</th><th>q</th><th>overlap</th></tr></thead><tbody>" +
        F.terms[i].map(function (t, k) {
          var term = D.terms[t];
          return "<tr><td>" + esc(term[0]) + "</td><td>" + esc(term[1]) + "</td><td>" + esc(term[2]) + "</td><td class='num'>" + fmt(F.term_q[i][k], 2) +
            "</td><td class='num'>" + fmt(F.term_overlap[i][k]) + "</td></tr>";
        }).join("") + "</tbody></table>");
    } else h.push("<p class='na'>no significant term</p>");
    // cell types
    if (run.cell_types && F.cells[i]) {
      var ct = run.cell_types;
      h.push("<h3>Activity per cell type</h3><p class='note'>Share of sampled cells (obs column “" + esc(ct.column) +
        "”) in which the feature fires on at least one gene.</p><table class='t' id='card-cells'><thead><tr><th>cell type</th><th>cells</th><th>fires in</th><th></th></tr></thead><tbody>" +
        ct.types.map(function (name, k) {
          var v = F.cells[i][k];
          return "<tr><td>" + esc(name) + "</td><td class='num'>" + ct.n_cells[k] + "</td><td class='num'>" + pct(v) +
            "</td><td><span class='bar' style='width:" + Math.round(120 * (v || 0)) + "px'></span></td></tr>";
        }).join("") + "</tbody></table>");
    }
    // edges
    var outs = edgesOf(i, "out"), ins = edgesOf(i, "inn");
    h.push("<h3>Neighbourhood</h3><p class='note'>Layers left to right; blue: d &lt; 0 (ablating the source lowers the target), red: d &gt; 0. " +
      "Click a node to open its card. <label>hops <select id='hops'><option>1</option><option" + (graphHops === 2 ? " selected" : "") +
      ">2</option></select></label> <span id='graph-note'></span></p><div id='graph'></div>");
    h.push("<h3>Drives (out, " + outs.length.toLocaleString("en-US") + ")</h3>" + (outs.length ? edgeTable("out", outs, function (e) { return E.t[e]; }) : "<p class='na'>no outgoing edge (not traced as a source, or none passed)</p>"));
    h.push("<h3>Driven by (in, " + ins.length.toLocaleString("en-US") + ")</h3>" + (ins.length ? edgeTable("in", ins, function (e) { return E.s[e]; }) : "<p class='na'>no incoming edge</p>"));
    h.push(nullContext(i, outs, ins));
    return h.join("");
  }

  // ------------------------------------------------------------------ neighbourhood graph
  var cy = null, graphHops = 1, current = -1;
  function neighbourhood(i, hops) {
    var nodes = new Map([[i, 0]]), edges = new Set(), capped = false;
    function expand(f, cap, depth) {
      var es = edgesOf(f, "out").concat(edgesOf(f, "inn")).sort(byAbsD);
      if (es.length > cap) capped = true;
      es.slice(0, cap).forEach(function (e) {
        var o = E.s[e] === f ? E.t[e] : E.s[e];
        if (!nodes.has(o)) { if (nodes.size >= MAX_NODES) { capped = true; return; } nodes.set(o, depth); }
        edges.add(e);
      });
    }
    expand(i, HOP1_CAP, 1);
    if (hops > 1) Array.from(nodes.keys()).filter(function (f) { return f !== i; }).forEach(function (f) { expand(f, HOP2_CAP, 2); });
    // edges among the chosen nodes that were not walked
    return { nodes: nodes, edges: edges, capped: capped };
  }

  function drawGraph(i) {
    var box = el("graph");
    if (!box || typeof cytoscape === "undefined") return;
    var nb = neighbourhood(i, graphHops), layers = new Map();
    nb.nodes.forEach(function (depth, f) {
      if (!layers.has(F.layer[f])) layers.set(F.layer[f], []);
      layers.get(F.layer[f]).push(f);
    });
    var order = Array.from(layers.keys()).sort(function (a, b) { return a - b; }), els = [];
    order.forEach(function (L, col) {
      var fs = layers.get(L).sort(function (a, b) { return a === i ? -1 : b === i ? 1 : F.id[a] - F.id[b]; });
      fs.forEach(function (f, row) {
        var lab = labelOf(f);
        els.push({ group: "nodes", data: { id: "n" + f, f: f, label: featureName(f) + (lab !== "unannotated" ? "\n" + (lab.length > 28 ? lab.slice(0, 27) + "…" : lab) : ""),
          focus: f === i ? 1 : 0 }, position: { x: 230 * col, y: 70 * (row - (fs.length - 1) / 2) } });
      });
    });
    nb.edges.forEach(function (e) {
      els.push({ group: "edges", data: { id: "e" + e, source: "n" + E.s[e], target: "n" + E.t[e], w: Math.min(8, 1 + Math.abs(E.d[e])), neg: E.d[e] < 0 ? 1 : 0 } });
    });
    if (cy) cy.destroy();
    cy = cytoscape({
      container: box, elements: els, layout: { name: "preset" }, minZoom: 0.1, maxZoom: 3,
      style: [
        { selector: "node", style: { "label": "data(label)", "text-wrap": "wrap", "font-size": 12, "text-valign": "bottom", "text-margin-y": 3,
          "width": 18, "height": 18, "background-color": "#8a8f98" } },
        { selector: "node[focus = 1]", style: { "background-color": "#e3a008", "width": 26, "height": 26, "font-weight": "bold" } },
        { selector: "edge", style: { "width": "data(w)", "curve-style": "bezier", "target-arrow-shape": "triangle", "opacity": 0.7, "line-color": "#d6453d", "target-arrow-color": "#d6453d" } },
        { selector: "edge[neg = 1]", style: { "line-color": "#2f6fce", "target-arrow-color": "#2f6fce" } }
      ]
    });
    cy.fit(undefined, 40);
    if (cy.zoom() > 1.2) { cy.zoom(1.2); cy.center(); }
    cy.on("tap", "node", function (evt) { go("f=" + evt.target.data("f")); });
    el("graph-note").textContent = nb.nodes.size + " features, " + nb.edges.size + " edges" + (nb.capped ? " (capped: strongest |d| first, at most " + HOP1_CAP + " per feature at hop 1, " + HOP2_CAP + " at hop 2, " + MAX_NODES + " nodes)" : "");
    window.atlas.cy = cy;
  }

  // ------------------------------------------------------------------ other views
  function overview() {
    var h = ["<h2>Overview</h2><table class='t' id='runs'><thead><tr><th>run</th><th>model</th><th>features embedded</th><th>edges</th><th>SAE layers</th><th>cell types</th></tr></thead><tbody>"];
    var perRun = D.runs.map(function () { return 0; });
    for (var i = 0; i < nF; i++) perRun[F.run[i]]++;
    D.runs.forEach(function (r, k) {
      h.push("<tr><td>" + esc(r.name) + "</td><td>" + esc(r.model) + "</td><td class='num'>" + perRun[k].toLocaleString("en-US") + "</td><td class='num'>" + fmt(r.n_edges) +
        "</td><td>" + Object.keys(r.sae).join(", ") + "</td><td>" + (r.cell_types ? esc(r.cell_types.column) + " (" + r.cell_types.types.length + ")" : "") + "</td></tr>");
    });
    h.push("</tbody></table><h3>Strongest edges</h3>");
    var top = [];
    for (var e = 0; e < nE; e++) {
      if (top.length < 25 || Math.abs(E.d[e]) > Math.abs(E.d[top[top.length - 1]])) {
        top.push(e); top.sort(byAbsD); if (top.length > 25) top.pop();
      }
    }
    if (top.length) {
      h.push("<table class='t'><thead><tr><th>run</th><th>source</th><th>label</th><th>target</th><th>label</th><th>d</th><th>|d| / null</th><th>q</th></tr></thead><tbody>" +
        top.map(function (e) {
          return "<tr><td>" + esc(runName(E.s[e])) + "</td><td>" + featureLink(E.s[e]) + "</td><td>" + esc(labelOf(E.s[e])) + "</td><td>" + featureLink(E.t[e]) +
            "</td><td>" + esc(labelOf(E.t[e])) + "</td><td class='num " + (E.d[e] < 0 ? "neg" : "pos") + "'>" + fmt(E.d[e]) + "</td><td class='num'>" + fmt(E.sp[e]) +
            "</td><td class='num'>" + fmt(E.q[e], 2) + "</td></tr>";
        }).join("") + "</tbody></table>");
    } else h.push("<p class='na'>no edges</p>");
    h.push("<p class='note'>Search a gene symbol, a term (id or words) or a feature (e.g. L2:F17). Sign convention: d &lt; 0 means ablating the source lowers the target (the source supports it).</p>");
    return h.join("");
  }

  function consensus() {
    var C = D.compare;
    if (!C) return "<p class='na'>No comparison in this atlas (sccircuits atlas --compare CMP).</p>";
    var groups = Object.keys(C.groups), h = ["<h2>Cross-model consensus</h2><p class='note'>Domain pairs (source label → target label) found in every group of " +
      esc(C.path) + " (edge set “" + esc(C.edge_set) + "”): " + fmt(C.n_consensus) + " pairs; pairs per group " + esc(JSON.stringify(C.pairs_per_group || {})) + ".</p>"];
    Object.keys(C.nulls || {}).forEach(function (k) {
      var n = C.nulls[k];
      h.push("<p class='note'>" + esc(k.replace(/_/g, " ")) + (k === C.headline_null ? " (headline)" : "") + ": expected " + fmt(n.expected) + ", fold " + fmt(n.fold_enrichment) + ", p = " + fmt(n.p_value, 2) + " (" + fmt(n.n_draws) + " draws)</p>");
    });
    if (C.runs_not_in_atlas.length) h.push("<p class='warn'>Runs of the comparison not in this atlas (their features are not shown): " + esc(C.runs_not_in_atlas.join(", ")) + "</p>");
    if (!C.pairs.length) { h.push("<p class='na'>No consensus pair.</p>"); return h.join(""); }
    h.push("<table class='t' id='consensus'><thead><tr><th>source domain</th><th>target domain</th>" + groups.map(function (g) { return "<th>" + esc(g) + ": edges, mean |d|</th>"; }).join("") +
      "<th>high confidence</th><th>features behind the pair</th></tr></thead><tbody>");
    C.pairs.forEach(function (p) {
      var behind = Object.keys(p.edges).map(function (r) {
        var es = p.edges[r].slice().sort(byAbsD);
        return "<div><b>" + esc(D.runs[+r].name) + "</b>: " + es.slice(0, 20).map(function (e) { return featureLink(E.s[e]) + "→" + featureLink(E.t[e]) + " (d " + fmt(E.d[e]) + ")"; }).join(", ") +
          (es.length > 20 ? " … " + (es.length - 20) + " more" : "") + "</div>";
      }).join("");
      h.push("<tr><td>" + esc(p.source[1]) + " <span class='tid'>" + esc(p.source[0]) + "</span></td><td>" + esc(p.target[1]) + " <span class='tid'>" + esc(p.target[0]) + "</span></td>" +
        groups.map(function (g) { var s = p.groups[g] || {}; return "<td class='num'>" + fmt(s.n_edges) + ", " + fmt(s.mean_abs_d) + "</td>"; }).join("") +
        "<td>" + (p.high_confidence ? "yes" : "") + "</td><td>" + (behind || "<span class='na'>no embedded edge</span>") + "</td></tr>");
    });
    h.push("</tbody></table>");
    return h.join("");
  }

  // ------------------------------------------------------------------ routing
  function go(hash) { if (location.hash.slice(1) === hash) route(); else location.hash = hash; }
  function route() {
    var h = decodeURIComponent(location.hash.slice(1)), main = el("main");
    if (h.lastIndexOf("f=", 0) === 0) {
      var i = +h.slice(2);
      if (!(i >= 0 && i < nF)) { main.innerHTML = "<p class='warn'>No feature #" + esc(h.slice(2)) + " in this atlas.</p>"; return; }
      if (i !== current) tableState = {};
      current = i;
      main.innerHTML = card(i);
      drawGraph(i);
      markResult(i);
    } else if (h.lastIndexOf("q=", 0) === 0) {
      el("search").value = h.slice(2);
      showResults(h.slice(2));
    } else if (h === "consensus") {
      current = -1; main.innerHTML = consensus();
    } else {
      current = -1; main.innerHTML = overview();
    }
    window.scrollTo(0, 0);
  }
  function markResult(i) {
    Array.prototype.forEach.call(document.querySelectorAll("#results li.result"), function (li) {
      li.classList.toggle("active", +li.getAttribute("data-f") === i);
    });
  }

  // ------------------------------------------------------------------ page
  function layout() {
    var runs = D.runs.map(function (r) { return esc(r.name); }).join(", ");
    document.body.insertAdjacentHTML("beforeend",
      "<header><h1><a href='#overview'>sccircuits atlas</a></h1><span class='runs'>" + runs + " · " + nF.toLocaleString("en-US") + " features · " +
      nE.toLocaleString("en-US") + " edges</span>" + (D.compare ? " <a href='#consensus' id='consensus-link'>cross-model consensus</a>" : "") + "</header>" +
      (D.messages.length ? "<div id='messages'>" + D.messages.map(function (m) { return "<p class='warn'>" + esc(m) + "</p>"; }).join("") + "</div>" : "") +
      "<div id='wrap'><aside><input id='search' type='search' placeholder='gene, term or feature (L2:F17)' autocomplete='off' spellcheck='false'>" +
      "<div id='results'></div></aside><main id='main'></main></div>");
    var timer = null;
    el("search").addEventListener("input", function (ev) {
      var v = ev.target.value;
      clearTimeout(timer);
      timer = setTimeout(function () { showResults(v); }, nF > 20000 ? 60 : 0);
    });
    el("results").addEventListener("click", function (ev) {
      var li = ev.target.closest("li.result");
      if (li) go("f=" + li.getAttribute("data-f"));
    });
    el("main").addEventListener("click", function (ev) {
      var th = ev.target.closest("th.sortable");
      if (th) {
        var key = th.getAttribute("data-table"), col = +th.getAttribute("data-col"), st = tableState[key];
        st.desc = st.col === col && st.desc !== null ? !st.desc : true;
        st.col = col;
        rerenderTables();
        return;
      }
      var more = ev.target.closest("button.more");
      if (more) { tableState[more.getAttribute("data-table")].all = true; rerenderTables(); }
    });
    el("main").addEventListener("change", function (ev) {
      if (ev.target.id === "hops") { graphHops = +ev.target.value; drawGraph(current); }
    });
    window.addEventListener("hashchange", route);
  }
  function rerenderTables() {
    var i = current, outs = edgesOf(i, "out"), ins = edgesOf(i, "inn");
    [["out", outs, function (e) { return E.t[e]; }], ["in", ins, function (e) { return E.s[e]; }]].forEach(function (x) {
      var t = el(x[0]);
      if (!t) return;
      var next = t.nextElementSibling;
      if (next && next.classList.contains("more")) next.remove();
      t.outerHTML = edgeTable(x[0], x[1], x[2]);
    });
  }

  window.atlas = { data: D, search: search, go: go, cy: null, ready: false };
  layout();
  route();
  window.atlas.ready = true;
  window.atlasReadyAt = performance.now();
  setTimeout(searchIndex, 50);  // build the search index once the first view is on screen
})();

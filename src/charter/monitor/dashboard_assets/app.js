// Charter monitoring dashboard: fetches the JSON API and draws it (no dependencies, no inline HTML from data).
"use strict";
(function () {
  const body = document.body;
  const BASE = body.dataset.base || "";
  const SINCE = body.dataset.since || "24h";
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "on") e.addEventListener("click", v); else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const num = (n) => Number(n || 0).toLocaleString("en-US");
  const pct = (r) => (r === null || r === undefined) ? "–" : (100 * r).toFixed(1) + "%";
  const score = (s) => (s === null || s === undefined) ? "–" : Number(s).toFixed(3);
  const when = (ts) => ts ? new Date(ts * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC" : "–";
  const short = (id) => (id && id.length > 24) ? id.slice(0, 22) + "…" : (id || "–");

  async function api(path, params) {
    const q = new URLSearchParams(Object.assign({ since: SINCE }, params || {}));
    const r = await fetch(`${BASE}/api/${path}?${q}`, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (r.status === 401) { window.location.assign(`${BASE}/login`); throw new Error("not logged in"); }
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    return data;
  }
  function showError(e) {
    const p = document.getElementById("error");
    p.textContent = `Could not load: ${e.message}`;
    p.hidden = false;
  }
  function setCard(id, text, value) {
    const e = document.querySelector(`[data-testid="${id}"]`);
    e.textContent = text;
    e.dataset.value = String(value);
  }
  function subjectLink(kind, id, label) {
    return el("a", { href: `#${kind}=${encodeURIComponent(id)}`, "data-testid": `${kind}-link`, "data-id": id,
      title: id }, label || short(id));
  }

  // -- overview ---------------------------------------------------------------------------
  function drawSummary(s) {
    setCard("total-events", num(s.events), s.events);
    setCard("blocked", num(s.blocked), s.blocked);
    setCard("block-rate", pct(s.block_rate), s.block_rate);
    setCard("flagged", num(s.flagged), s.flagged);
    setCard("escalation-rate", pct(s.escalation_rate), s.escalation_rate);
    const users = document.querySelector('[data-testid="users"]');
    if (s.users === undefined) users.closest(".card").hidden = true;  // not every store version counts them
    else setCard("users", num(s.users), s.users);
    setCard("open-alerts", num(s.open_alerts), s.open_alerts);
    drawBars("by-category", s.by_category);
    drawBars("by-stage", s.by_stage);
    const signals = s.signals || {};
    document.getElementById("signals-panel").hidden = !Object.keys(signals).length;
    drawBars("signals", signals);
    document.getElementById("updated").textContent = `updated ${when(s.generated_at)}`;
  }

  function drawBars(id, counts) {
    const box = document.getElementById(id);
    box.replaceChildren();
    box.className = "bars";
    const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]).slice(0, 20);
    if (!entries.length) { box.append(el("p", { class: "muted" }, "No flags in this period.")); return; }
    const max = Math.max(...entries.map((e) => e[1]));
    const rowH = 22, W = 420, labelW = 150, valW = 50;
    const s = svg("svg", { viewBox: `0 0 ${W} ${entries.length * rowH}`, role: "img" });
    entries.forEach(([name, n], i) => {
      const g = svg("g", { "data-testid": "bar", "data-name": name, "data-value": n });
      const w = Math.max(2, (W - labelW - valW) * n / max);
      g.append(svg("text", { x: 0, y: i * rowH + 15, class: "name" }, name.length > 22 ? name.slice(0, 21) + "…" : name));
      g.append(svg("rect", { x: labelW, y: i * rowH + 4, width: w, height: rowH - 8, class: "bar" }));
      g.append(svg("text", { x: labelW + w + 5, y: i * rowH + 15, class: "count" }, num(n)));
      g.append(svg("title", {}, `${name}: ${n}`));
      s.append(g);
    });
    box.append(s);
  }

  function drawChart(ts) {
    const box = document.getElementById("chart");
    box.replaceChildren();
    const b = ts.buckets || [];
    const W = 900, H = 240, L = 48, R = 48, T = 10, B = 26;
    const top = Math.max(1, ...b.map((x) => x.total));
    const p10 = Math.pow(10, Math.floor(Math.log10(top)));
    const maxT = [1, 2, 5, 10].map((m) => m * p10).find((v) => v >= top);  // a round axis maximum
    const maxR = Math.max(0.05, ...b.map((x) => x.block_rate || 0));
    const bw = (W - L - R) / Math.max(1, b.length);
    const y = (v) => T + (H - T - B) * (1 - v / maxT);
    const yr = (v) => T + (H - T - B) * (1 - v / maxR);
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "requests and block rate over time" });
    s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    for (const f of [0, 0.5, 1]) {
      if (f !== 0.5 || maxT >= 2) s.append(svg("text", { x: L - 6, y: y(maxT * f) + 4, "text-anchor": "end" }, num(maxT * f)));
      s.append(svg("text", { x: W - R + 6, y: yr(maxR * f) + 4 }, pct(maxR * f)));
    }
    const pts = [];
    b.forEach((x, i) => {
      const x0 = L + i * bw;
      if (x.total) {
        s.append(svg("rect", { x: x0 + 0.5, y: y(x.total), width: Math.max(1, bw - 1), height: H - B - y(x.total), class: "total" }));
        if (x.blocked) s.append(svg("rect", { x: x0 + 0.5, y: y(x.blocked), width: Math.max(1, bw - 1), height: H - B - y(x.blocked), class: "blocked" }));
        pts.push(`${(x0 + bw / 2).toFixed(1)},${yr(x.block_rate || 0).toFixed(1)}`);
      }
    });
    if (pts.length) s.append(svg("polyline", { points: pts.join(" "), class: "rate", "data-testid": "rate-line" }));
    const ticks = Math.min(6, b.length);
    for (let k = 0; k < ticks; k++) {
      const i = Math.floor(k * (b.length - 1) / Math.max(1, ticks - 1));
      const d = new Date(b[i].t * 1000).toISOString();
      const lab = SINCE === "7d" ? d.slice(5, 13).replace("T", " ") + "h" : d.slice(11, 16);
      s.append(svg("text", { x: L + i * bw, y: H - 8 }, lab));
    }
    box.dataset.buckets = String(b.length);
    box.dataset.total = String(b.reduce((a, x) => a + x.total, 0));
    box.append(s);
  }

  function drawAlerts(a) {
    const tb = document.getElementById("alerts");
    tb.replaceChildren();
    if (!a.alerts.length) { tb.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No open alerts."))); return; }
    for (const x of a.alerts) {
      const linkable = x.subject_kind === "user" || x.subject_kind === "conversation";
      tb.append(el("tr", { "data-testid": "alert-row", "data-rule": x.rule },
        el("td", {}, when(x.last_seen)), el("td", { class: `sev-${x.severity}` }, x.severity), el("td", {}, x.rule),
        el("td", {}, `${x.subject_kind} `, linkable ? subjectLink(x.subject_kind, x.subject_id) : short(x.subject_id)),
        el("td", {}, x.summary), el("td", { class: "num" }, num(x.count)),
        el("td", {}, ...["acknowledged", "resolved"].filter((st) => st !== x.status).map((st) =>
          el("button", { type: "button", class: "action", "data-testid": `alert-${st}`, "data-id": x.id,
                         on: () => setAlertStatus(x.id, st).then(load).catch(showError) },
             st === "acknowledged" ? "Acknowledge" : "Resolve")))));
    }
  }

  async function setAlertStatus(id, status) {
    const r = await fetch(`${BASE}/api/alerts/${encodeURIComponent(id)}/status`, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ status }),
    });
    if (r.status === 401) { window.location.assign(`${BASE}/login`); throw new Error("not logged in"); }
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    return data;
  }

  function drawUsers(u) {
    const tb = document.getElementById("top-users");
    tb.replaceChildren();
    if (!u.users.length) { tb.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No traffic in this period."))); return; }
    for (const x of u.users) {
      tb.append(el("tr", { "data-testid": "user-row", "data-id": x.user_id },
        el("td", {}, subjectLink("user", x.user_id)), el("td", { class: "num" }, num(x.events)),
        el("td", { class: "num" }, num(x.flagged)), el("td", { class: "num" }, num(x.blocked)),
        el("td", { class: "num" }, score(x.max_score)), el("td", { class: "num" }, num(x.conversations)),
        el("td", { class: "num" }, num(x.open_alerts)), el("td", {}, when(x.last_ts))));
    }
  }

  function drawClusters(c) {
    const box = document.getElementById("clusters");
    box.replaceChildren();
    if (!c.available || !c.clusters.length) {
      box.append(el("p", { class: "muted", "data-testid": "clusters-empty" },
        c.available ? "No clusters in this period." : `No clusters: ${c.reason}.`));
      return;
    }
    for (const x of c.clusters) {
      const cats = Object.entries(x.categories || {}).map(([k, v]) => `${k} ${v}`).join(", ");
      box.append(el("div", { class: "cluster", "data-testid": "cluster" },
        el("h3", {}, `#${x.id} ${x.label} `, el("span", { class: "muted" }, `${num(x.size)} events, ${num(x.users)} users`)),
        el("p", {}, "terms: ", (x.top_terms || []).join(", "), cats ? ` · categories: ${cats}` : ""),
        el("p", { class: "muted" }, `${when(x.first_ts)} – ${when(x.last_ts)}`),
        el("ul", {}, ...(x.examples || []).map((t) => el("li", { class: "text" }, t)))));
    }
  }

  // -- drill-down (#user=ID or #conversation=ID) -------------------------------------------
  async function drill() {
    const sec = document.getElementById("drill");
    const m = /^#(user|conversation)=(.+)$/.exec(window.location.hash);
    if (!m) { sec.hidden = true; delete sec.dataset.loaded; return; }
    const kind = m[1], id = decodeURIComponent(m[2]);
    sec.hidden = false;
    sec.dataset.kind = kind;
    delete sec.dataset.loaded;
    document.getElementById("drill-title").textContent = `${kind === "user" ? "User" : "Conversation"} ${id}`;
    const tb = document.getElementById("drill-events");
    tb.replaceChildren();
    const d = await api("events", { [kind === "user" ? "user_id" : "conversation_id"]: id });
    document.getElementById("drill-note").textContent =
      `${d.events.length} events in the last ${d.range}, newest first${d.truncated ? " (truncated)" : ""}`;
    const convs = document.getElementById("drill-convs");
    convs.replaceChildren();
    if (kind === "user" && Object.keys(d.conversations).length) {
      convs.append("Conversations: ");
      for (const [cid, n] of Object.entries(d.conversations)) convs.append(el("span", { class: "chip" }, subjectLink("conversation", cid), ` (${n})`));
    }
    const al = document.getElementById("drill-alerts");
    al.replaceChildren(...d.alerts.map((a) => el("p", { class: `sev-${a.severity}` }, `${a.status} alert ${a.rule}: ${a.summary}`)));
    for (const e of d.events) {
      tb.append(el("tr", { "data-testid": "drill-row", "data-request": e.request_id },
        el("td", {}, when(e.ts)), el("td", { class: `decision-${e.decision}` }, e.decision), el("td", {}, e.category || "–"),
        el("td", { class: "num" }, score(e.score)), el("td", {}, e.view || "–"), el("td", {}, e.stage || "–"),
        el("td", {}, e.escalated ? "yes" : ""), el("td", {}, subjectLink("user", e.user_id)),
        el("td", {}, e.conversation_id ? subjectLink("conversation", e.conversation_id) : "–"),
        el("td", { class: "text" }, e.text || "")));
    }
    if (!d.events.length) tb.append(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "No events in this period.")));
    sec.dataset.loaded = id;
    sec.scrollIntoView({ block: "start" });
  }

  document.getElementById("drill-close").addEventListener("click", (ev) => {
    ev.preventDefault();
    history.pushState(null, "", window.location.pathname + window.location.search);
    drill().catch(showError);
  });
  window.addEventListener("hashchange", () => drill().catch(showError));

  async function load() {
    const jobs = [
      api("summary").then(drawSummary), api("timeseries").then(drawChart), api("users").then(drawUsers),
      api("alerts", { status: "open" }).then(drawAlerts),
      api("clusters").then(drawClusters),
    ];
    const res = await Promise.allSettled(jobs);
    const bad = res.find((r) => r.status === "rejected");
    if (bad) showError(bad.reason);
    body.dataset.ready = "1";
  }
  load();
  drill().catch(showError);
})();

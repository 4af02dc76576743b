// interest-stream dashboard: polls /v1/stats, /v1/dashboard/live (counters and the
// replica's per-second history, drawn as inline SVG time charts) and, for the selected
// user, /v1/dashboard/users/{id}. Every value is written with textContent or as an SVG
// attribute built from numbers: ids from events never become markup.
"use strict";

(function () {
  const STATS_MS = 1000;
  const USER_MS = 1500;
  const TOP_K = 10;

  const $ = (id) => document.getElementById(id);
  const fmtInt = new Intl.NumberFormat("en-US");

  function text(id, value) {
    const el = $(id);
    const s = value === null || value === undefined || value === "" ? "–" : String(value);
    if (el.textContent !== s) el.textContent = s;
  }

  function ms(value) {
    if (value === null || value === undefined) return "–";
    return value >= 1000 ? (value / 1000).toFixed(2) + " s" : Math.round(value) + " ms";
  }

  function when(epochMs) {
    if (epochMs === null || epochMs === undefined) return "–";
    const d = new Date(epochMs);
    const ago = Math.max(0, (Date.now() - epochMs) / 1000);
    const rel = ago < 120 ? Math.round(ago) + " s ago" : ago < 7200 ? Math.round(ago / 60) + " min ago"
      : ago < 172800 ? Math.round(ago / 3600) + " h ago" : Math.round(ago / 86400) + " d ago";
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") + " (" + rel + ")";
  }

  async function getJSON(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 5000);
    try {
      const resp = await fetch(url, { signal: ctl.signal, cache: "no-cache",
        headers: { Accept: "application/json" } });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      return { status: resp.status, body: body };
    } finally {
      clearTimeout(timer);
    }
  }

  // ------------------------------------------------------------------ time charts
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART_W = 600;
  const CHART_H = 120;
  let historyMs = 300000;
  let hist = []; // samples {t, rate, p50_ms, p99_ms, lag, model_version}, oldest first
  let lastT = null;

  const CHARTS = [
    { id: "chart-rate", max: "rate-max", now: "rate-now", label: "updates per second",
      series: [{ key: "rate", cls: "line-rate" }], fmt: (v) => fmtInt.format(Math.round(v)) },
    { id: "chart-fresh", max: "fresh-max", now: "fresh-now", label: "freshness p50 and p99",
      series: [{ key: "p50_ms", cls: "line-p50" }, { key: "p99_ms", cls: "line-p99" }], fmt: ms },
    { id: "chart-lag", max: "lag-max", now: "lag-now", label: "consumer lag (messages)",
      series: [{ key: "lag", cls: "line-lag" }], fmt: (v) => fmtInt.format(Math.round(v)) },
  ];

  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function mergeHistory(samples) {
    if (!Array.isArray(samples)) return;
    for (const s of samples) {
      if (s && typeof s.t === "number" && (lastT === null || s.t > lastT)) {
        hist.push(s);
        lastT = s.t;
      }
    }
    while (hist.length && hist[0].t < lastT - historyMs) hist.shift();
  }

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : null;
  }

  function drawChart(c) {
    const svg = $(c.id);
    const t0 = lastT === null ? 0 : lastT - historyMs;
    let max = 0;
    for (const s of hist) for (const ser of c.series) {
      const v = num(s[ser.key]);
      if (v !== null && v > max) max = v;
    }
    max = niceMax(max);
    const x = (t) => ((t - t0) / historyMs * CHART_W).toFixed(1);
    const y = (v) => (CHART_H - Math.min(v / max, 1) * (CHART_H - 4)).toFixed(1);
    const frag = document.createDocumentFragment();
    frag.appendChild(svgEl("line", { x1: 0, x2: CHART_W, y1: CHART_H / 2, y2: CHART_H / 2,
      class: "grid", "vector-effect": "non-scaling-stroke" }));
    for (let i = 1; i < hist.length; i++) {
      const before = hist[i - 1].model_version;
      const after = hist[i].model_version;
      if (before && after && before !== after) {
        const mark = svgEl("line", { x1: x(hist[i].t), x2: x(hist[i].t), y1: 0, y2: CHART_H,
          class: "model-mark", "vector-effect": "non-scaling-stroke" });
        const title = document.createElementNS(SVG_NS, "title");
        title.textContent = "model " + after + " swapped in (was " + before + ")";
        mark.appendChild(title);
        frag.appendChild(mark);
      }
    }
    for (const ser of c.series) {
      let run = [];
      const flush = () => {
        if (run.length > 1) {
          frag.appendChild(svgEl("polyline", { points: run.join(" "), class: "line " + ser.cls,
            "vector-effect": "non-scaling-stroke" }));
        } else if (run.length === 1) {
          const [px, py] = run[0].split(",");
          frag.appendChild(svgEl("circle", { cx: px, cy: py, r: 1.5, class: "dot " + ser.cls }));
        }
        run = [];
      };
      for (const s of hist) {
        const v = num(s[ser.key]);
        if (v === null) flush();
        else run.push(x(s.t) + "," + y(v));
      }
      flush();
    }
    svg.replaceChildren(frag);
    text(c.max, c.fmt(max));
    // the latest value of each series (freshness has none in a second without records)
    const latest = c.series.map((ser) => {
      for (let i = hist.length - 1; i >= 0; i--) {
        const v = num(hist[i][ser.key]);
        if (v !== null) return v;
      }
      return null;
    });
    const shown = latest.every((v) => v === null) ? null
      : latest.map((v) => (v === null ? "–" : c.fmt(v))).join(" / ");
    text(c.now, shown);
    svg.setAttribute("aria-label", c.label + ", last " + Math.round(historyMs / 60000) +
      " minutes; latest " + (shown === null ? "none" : shown));
    svg.dataset.points = String(hist.length);
  }

  function drawCharts() {
    for (const c of CHARTS) drawChart(c);
  }

  // ------------------------------------------------------------------ live figures
  let prev = null; // {applied, t}
  // from /v1/dashboard/live: does the API know a worker to ask "why"?
  let explainAvailable = false;
  let explainKnown = false;
  const NO_WORKER = "No explanations: the API knows no worker to ask (INTEREST_WORKER_URLS).";
  let statsBusy = false;

  async function pollStats() {
    if (statsBusy || document.hidden) return;
    statsBusy = true;
    try {
      const liveUrl = "/v1/dashboard/live" + (lastT === null ? "" : "?since=" + lastT);
      const [stats, live] = await Promise.all([getJSON("/v1/stats"), getJSON(liveUrl)]);
      const s = stats.body || {};
      const l = live.body || {};
      const status = $("status");
      if (stats.status === 200) {
        const ready = !!s.ready;
        status.textContent = ready ? "ready" : "catching up" + (s.lag != null ? " (" + fmtInt.format(s.lag) + " behind)" : "");
        status.className = "badge " + (ready ? "ok" : "wait");
      } else {
        status.textContent = "API answered " + stats.status;
        status.className = "badge bad";
      }
      const f = s.freshness || {};
      text("p50", ms(f.p50_ms));
      text("p95", ms(f.p95_ms));
      text("p99", ms(f.p99_ms));
      text("samples", f.samples != null ? fmtInt.format(f.samples) : null);
      text("lag", s.lag != null ? fmtInt.format(s.lag) : null);
      text("users", s.users != null ? fmtInt.format(s.users) : null);
      text("items", s.items != null ? fmtInt.format(s.items) : null);
      text("model", s.model_version || l.model_version || "none loaded");
      text("version", l.version ? "v" + l.version : "");
      const applied = l.records ? l.records.applied : null;
      text("applied", applied != null ? fmtInt.format(applied) : null);
      const now = performance.now();
      if (applied != null && prev !== null && now > prev.t) {
        const rate = Math.max(0, applied - prev.applied) / ((now - prev.t) / 1000);
        text("rate", rate >= 100 ? fmtInt.format(Math.round(rate)) : rate.toFixed(1));
      }
      if (applied != null) prev = { applied: applied, t: now };
      if (live.status === 200) {
        explainAvailable = !!l.explain;
        explainKnown = true;
      }
      if (live.status === 200) {
        if (typeof l.history_s === "number" && l.history_s > 0) historyMs = l.history_s * 1000;
        mergeHistory(l.history);
        drawCharts();
      }
    } catch (e) {
      const status = $("status");
      status.textContent = "API unreachable";
      status.className = "badge bad";
    } finally {
      statsBusy = false;
    }
  }

  // ------------------------------------------------------------------ explorer
  let currentUser = null;
  let shownVersion = null;
  let userBusy = false;

  function cell(row, value, cls) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "–" : String(value);
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function fillTable(id, rows, withScore) {
    const body = $(id).tBodies[0];
    const frag = document.createDocumentFragment();
    rows.forEach((r, i) => {
      const tr = document.createElement("tr");
      cell(tr, i + 1, "num");
      cell(tr, r.item_id, "id");
      cell(tr, r.category, "id");
      if (withScore) cell(tr, r.score.toFixed(3), "num");
      frag.appendChild(tr);
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = withScore ? 4 : 3;
      td.textContent = "none";
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  function fillCategories(id, horizon) {
    const ol = $(id);
    const frag = document.createDocumentFragment();
    const cats = horizon ? horizon.categories : null;
    if (cats) {
      cats.forEach((c) => {
        const li = document.createElement("li");
        li.textContent = c.category + " · " + Math.round(c.share * 100) + "%";
        frag.appendChild(li);
      });
    }
    ol.replaceChildren(frag);
    ol.hidden = !cats;
  }

  // ------------------------------------------------------------------ explanations
  const pct = (x) => (x * 100).toFixed(0) + "%";

  function becauseText(b) {
    if (!b) return "because of: (no explanation: the user is not held by any worker)";
    const parts = b.events.filter((e) => e.delta > 0).map((e) => e.group
      ? e.events + " older events (" + pct(e.share) + ")"
      : e.event_type + " of " + e.item_id + " at " + when(e.ts).split(" (")[0] + " (" + pct(e.share) + ")");
    // a re-ranked item: the item's own statistics (not the user's events) have a share too
    const names = {log_pop: "popularity", log_trend_1d: "trend (1 day)",
      log_trend_7d: "trend (7 days)", unknown: "no item vector"};
    const terms = Object.entries(b.terms || {}).filter(([, t]) => Math.abs(t.share) >= 0.005)
      .map(([n, t]) => (names[n] || n) + " " + pct(t.share));
    return "because of " + (parts.length ? parts.join(", ") : "no single event") +
      "; prior " + pct(b.prior_share) + (terms.length ? "; " + terms.join(", ") : "");
  }


  async function explainOn() {
    if (!explainKnown) {
      const r = await getJSON("/v1/dashboard/live?since=" + Date.now());
      if (r.status === 200 && r.body) {
        explainAvailable = !!r.body.explain;
        explainKnown = true;
      }
    }
    return explainAvailable;
  }

  function fillBecause(id, rows, label) {
    const frag = document.createDocumentFragment();
    rows.forEach((r) => {
      const li = document.createElement("li");
      const head = document.createElement("span");
      head.className = "id";
      head.textContent = label(r) + " · " + r.score.toFixed(3);
      li.append(head);
      if (explainAvailable || r.because) {
        const why = document.createElement("p");
        why.className = "because";
        why.textContent = becauseText(r.because);
        li.append(why);
      }
      frag.appendChild(li);
    });
    $(id).replaceChildren(frag);
  }

  async function loadRecs(user) {
    const why = await explainOn();
    const r = await getJSON("/v1/users/" + encodeURIComponent(user) +
      "/recommendations?k=5" + (why ? "&explain=true&explain_events=3" : ""));
    if (user !== currentUser) return;
    if (r.status === 200 && r.body) {
      fillBecause("recs", r.body.items, (it) => it.item_id);
      $("recs-status").textContent = why ? "" : NO_WORKER;
    } else {
      $("recs").replaceChildren();
      const detail = r.body && r.body.detail ? ": " + String(r.body.detail) : "";
      $("recs-status").textContent = "No explanation (" + r.status + detail + ")";
    }
  }

  async function loadAudience(item) {
    $("audience-status").textContent = "Loading…";
    try {
      const resp = await fetch("/v1/audience", { method: "POST", cache: "no-cache",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify((await explainOn())
          ? { item_id: item, k: 5, explain: true, explain_events: 3 }
          : { item_id: item, k: 5 }) });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      if (resp.status === 200 && body) {
        fillBecause("audience", body.users, (u) => u.user_id);
        $("audience-status").textContent = !body.users.length ? "No users yet."
          : explainAvailable ? "" : NO_WORKER;
      } else {
        $("audience").replaceChildren();
        const detail = body && body.detail ? ": " + String(body.detail) : "";
        $("audience-status").textContent = "Error " + resp.status + detail;
      }
    } catch (e) {
      $("audience-status").textContent = "API unreachable";
    }
  }

  function renderTimes(u) {
    text("u-event-time", when(u.event_time));
    text("u-updated", when(u.updated_at));
  }

  function render(u) {
    text("u-id", u.user_id);
    text("u-version", u.version);
    renderTimes(u);
    text("u-model", u.model_version);
    text("u-purchased", u.purchased.length ? u.purchased.join(", ") : "none");
    fillTable("recent", u.recent, false);
    for (const h of ["short", "long"]) {
      fillCategories(h + "-categories", u[h]);
      fillTable(h, u[h] ? u[h].items : [], true);
    }
    $("user").hidden = false;
  }

  async function pollUser() {
    if (currentUser === null || userBusy || document.hidden) return;
    const user = currentUser;
    userBusy = true;
    try {
      const r = await getJSON("/v1/dashboard/users/" + encodeURIComponent(user) + "?k=" + TOP_K);
      if (user !== currentUser) return; // the selection changed meanwhile
      const msg = $("explore-status");
      if (r.status === 200 && r.body) {
        // a new user version, or a new model's catalogue (top items change): render again
        const shown = r.body.version + "|" + r.body.catalogue_model_version;
        if (shown !== shownVersion) {
          render(r.body);
          shownVersion = shown;
          loadRecs(user).catch(() => { $("recs-status").textContent = "API unreachable"; });
        } else {
          renderTimes(r.body); // "… s ago" keeps counting while the user is unchanged
        }
        msg.textContent = r.body.catalogue ? "" : "No model checkpoint loaded: no top items.";
      } else if (r.status === 404) {
        $("user").hidden = true;
        shownVersion = null;
        msg.textContent = "Unknown user " + JSON.stringify(user) + " (not in this replica yet); still watching.";
      } else {
        const detail = r.body && r.body.detail ? ": " + String(r.body.detail) : "";
        msg.textContent = "Error " + r.status + detail;
      }
    } catch (e) {
      $("explore-status").textContent = "API unreachable";
    } finally {
      userBusy = false;
    }
  }

  function select(user) {
    currentUser = user;
    shownVersion = null;
    $("user").hidden = true;
    $("explore-status").textContent = "Loading " + JSON.stringify(user) + "…";
    history.replaceState(null, "", "#user=" + encodeURIComponent(user));
    pollUser();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("explore").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const user = $("user-id").value.trim();
      if (user) select(user);
    });
    $("audience-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const item = $("audience-item").value.trim();
      if (item) loadAudience(item);
    });
    const m = /^#user=(.+)$/.exec(location.hash);
    if (m) {
      try {
        const user = decodeURIComponent(m[1]);
        $("user-id").value = user;
        select(user);
      } catch (e) { /* a malformed hash is ignored */ }
    }
    pollStats();
    setInterval(pollStats, STATS_MS);
    setInterval(pollUser, USER_MS);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) { prev = null; pollStats(); pollUser(); }
    });
  });
})();

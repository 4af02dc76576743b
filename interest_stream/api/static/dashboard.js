// interest-stream dashboard: polls /v1/stats, /v1/dashboard/live and, for the
// selected user, /v1/dashboard/users/{id}. Every value is written with textContent:
// ids from events never become markup.
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

  // ------------------------------------------------------------------ live figures
  let prev = null; // {applied, t}
  let statsBusy = false;

  async function pollStats() {
    if (statsBusy || document.hidden) return;
    statsBusy = true;
    try {
      const [stats, live] = await Promise.all([getJSON("/v1/stats"), getJSON("/v1/dashboard/live")]);
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
        if (r.body.version !== shownVersion) {
          render(r.body);
          shownVersion = r.body.version;
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

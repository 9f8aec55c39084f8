// logfleet's web view: a LogQL box over the aggregator's Loki API, a
// volume histogram, results newest first, live tail, and the agents page.
// No framework and no network beyond this aggregator: everything here ships
// inside the binary. State lives in the URL fragment (#q=...&range=...), so
// a view can be bookmarked or shared; a token given there moves to
// sessionStorage and leaves the URL.
"use strict";

const $ = (id) => document.getElementById(id);
const RANGES = { "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
const state = { tab: "logs", q: "", range: "1h", limit: "1000", live: false };
let liveTimer = null;
let newestNs = null;
// Lines at exactly newestNs already shown: the next poll starts at that
// instant (not after it), so a line of another stream with the same
// timestamp that arrives later is not missed, and these are not repeated.
let atNewest = new Set();
let lineCount = 0;

function lineKey(labels, ts, text) {
  return ts + "\u0000" + JSON.stringify(labels) + "\u0000" + text;
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.has("token")) {
    sessionStorage.setItem("logfleet-token", p.get("token"));
    p.delete("token");
  }
  for (const k of ["tab", "q", "range", "limit"]) if (p.has(k)) state[k] = p.get(k);
  state.live = p.get("live") === "1";
  history.replaceState(null, "", "#" + p.toString());
}

function writeHash() {
  const p = new URLSearchParams();
  p.set("tab", state.tab);
  if (state.q) p.set("q", state.q);
  p.set("range", state.range);
  p.set("limit", state.limit);
  if (state.live) p.set("live", "1");
  history.replaceState(null, "", "#" + p.toString());
}

function headers() {
  const t = $("token").value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}

async function api(path, params) {
  const url = path + (params ? "?" + new URLSearchParams(params).toString() : "");
  const r = await fetch(url, { headers: headers() });
  const text = await r.text();
  if (!r.ok) {
    const why = r.status === 401 ? "the read token is missing or wrong" : text.trim();
    throw new Error(r.status + ": " + why);
  }
  return JSON.parse(text);
}

function setStatus(id, msg, isError) {
  const el = $(id);
  el.textContent = msg;
  el.classList.toggle("error", !!isError);
}

function fmtTime(ns) {
  const ms = Number(BigInt(ns) / 1000000n);
  const d = new Date(ms);
  const frac = (BigInt(ns) % 1000000000n).toString().padStart(9, "0").slice(0, 6);
  return d.toISOString().slice(0, 19).replace("T", " ") + "." + frac;
}

function source(labels) {
  return [labels.namespace, labels.pod, labels.container].filter(Boolean).join("/");
}

function lineItem(labels, ts, text) {
  const li = document.createElement("li");
  li.tabIndex = 0;
  li.dataset.ts = ts;
  if (labels.stream === "stderr") li.className = "stderr";
  const a = document.createElement("span");
  a.className = "ts";
  a.textContent = fmtTime(ts);
  const b = document.createElement("span");
  b.className = "src";
  b.textContent = source(labels);
  b.title = JSON.stringify(labels);
  const c = document.createElement("span");
  c.className = "text";
  c.textContent = text;
  li.append(a, b, c);
  li._labels = labels;
  return li;
}

function toggleDetails(li) {
  const open = li.querySelector(".details");
  if (open) {
    open.remove();
    return;
  }
  const d = document.createElement("div");
  d.className = "details";
  d.textContent = Object.entries(li._labels).map(([k, v]) => k + '="' + v + '"').join(", ");
  const copy = document.createElement("button");
  copy.type = "button";
  copy.textContent = "Copy line";
  copy.addEventListener("click", (e) => {
    e.stopPropagation();
    const text = li.querySelector(".text").textContent;
    if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
    copy.textContent = "Copied";
  });
  d.append(copy);
  li.append(d);
}

// Newest first, across streams.
function flatten(result) {
  const rows = [];
  for (const s of result) for (const [ts, text] of s.values) rows.push([s.stream, ts, text]);
  rows.sort((x, y) => (BigInt(y[1]) > BigInt(x[1]) ? 1 : BigInt(y[1]) < BigInt(x[1]) ? -1 : 0));
  return rows;
}

function drawVolume(matrix, startS, endS) {
  const svg = $("volume");
  svg.replaceChildren();
  const w = 1000, h = 70;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const points = new Map();
  for (const s of matrix) for (const [t, v] of s.values) points.set(t, (points.get(t) || 0) + Number(v));
  const max = Math.max(1, ...points.values());
  const span = Math.max(1, endS - startS);
  const bw = Math.max(1, (w / 60) - 1);
  for (const [t, v] of points) {
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const x = ((t - startS) / span) * w - bw;
    r.setAttribute("x", x.toFixed(1));
    r.setAttribute("width", bw.toFixed(1));
    r.setAttribute("y", (h - (v / max) * h).toFixed(1));
    r.setAttribute("height", ((v / max) * h).toFixed(1));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = new Date(t * 1000).toISOString() + ": " + v + " lines";
    r.append(title);
    svg.append(r);
  }
  $("volume-axis").replaceChildren(
    ...[startS, endS].map((t) => {
      const s = document.createElement("span");
      s.textContent = new Date(t * 1000).toISOString().slice(0, 19).replace("T", " ");
      return s;
    }),
  );
}

async function runQuery() {
  stopLive();
  state.q = $("query").value.trim();
  state.range = $("range").value;
  state.limit = $("limit").value;
  writeHash();
  if (!state.q) {
    setStatus("status", "Type a query such as {namespace=\"default\"}");
    return;
  }
  const endS = Math.floor(Date.now() / 1000);
  const startS = endS - RANGES[state.range];
  setStatus("status", "Running…");
  const t0 = performance.now();
  try {
    const [logs, volume] = await Promise.all([
      api("/loki/api/v1/query_range", {
        query: state.q, start: startS, end: endS + 1, limit: state.limit, direction: "backward",
      }),
      api("/loki/api/v1/query_range", {
        query: `sum(count_over_time(${state.q} [${Math.max(1, Math.ceil((endS - startS) / 60))}s]))`,
        start: startS, end: endS, step: Math.max(1, Math.ceil((endS - startS) / 60)),
      }).catch(() => null),
    ]);
    const rows = flatten(logs.data.result);
    const frag = document.createDocumentFragment();
    for (const [labels, ts, text] of rows) frag.append(lineItem(labels, ts, text));
    $("lines").replaceChildren(frag);
    lineCount = rows.length;
    newestNs = rows.length ? rows[0][1] : String(BigInt(endS) * 1000000000n);
    atNewest = new Set(rows.filter((r) => r[1] === newestNs).map((r) => lineKey(...r)));
    if (volume) drawVolume(volume.data.result, startS, endS);
    const ms = Math.round(performance.now() - t0);
    setStatus("status", `${rows.length} lines in ${ms} ms${rows.length >= Number(state.limit) ? " (limit reached)" : ""}`);
  } catch (e) {
    setStatus("status", String(e.message || e), true);
  }
  if (state.live) startLive();
}

async function pollLive() {
  if (!state.live) return;
  try {
    const start = newestNs || String(Date.now() * 1000000);
    const r = await api("/loki/api/v1/query_range", {
      query: state.q, start, end: String(BigInt(Date.now() + 1000) * 1000000n), limit: "1000", direction: "forward",
    });
    const rows = flatten(r.data.result).filter((x) => !atNewest.has(lineKey(...x)));
    if (rows.length) {
      if (rows[0][1] !== newestNs) atNewest = new Set();
      newestNs = rows[0][1];
      for (const x of rows) if (x[1] === newestNs) atNewest.add(lineKey(...x));
      const frag = document.createDocumentFragment();
      for (const [labels, ts, text] of rows) frag.append(lineItem(labels, ts, text));
      $("lines").prepend(frag);
      lineCount += rows.length;
      // Keep the page light: the newest 5,000 lines.
      const list = $("lines");
      while (list.childElementCount > 5000) list.lastElementChild.remove();
    }
    setStatus("status", `Live: ${lineCount} lines, newest at ${newestNs ? fmtTime(newestNs) : "-"}`);
  } catch (e) {
    setStatus("status", "Live: " + (e.message || e), true);
  }
  if (state.live) liveTimer = setTimeout(pollLive, 1000);
}

function startLive() {
  state.live = true;
  $("live").setAttribute("aria-pressed", "true");
  writeHash();
  clearTimeout(liveTimer);
  pollLive();
}

function stopLive() {
  const was = state.live;
  clearTimeout(liveTimer);
  $("live").setAttribute("aria-pressed", "false");
  state.live = false;
  return was;
}

function ago(rfc) {
  if (!rfc) return "never";
  const s = Math.round((Date.now() - Date.parse(rfc)) / 1000);
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

async function loadAgents() {
  setStatus("agents-status", "Loading…");
  try {
    const agents = await api("/api/v1/agents");
    const body = $("agents-table").tBodies[0];
    body.replaceChildren(
      ...agents.map((a) => {
        const tr = document.createElement("tr");
        const seen = a.last_seen || a.last_push;
        if (!seen || Date.now() - Date.parse(seen) > 120000) tr.className = "stale";
        const cells = [
          [a.node], [ago(a.last_seen)], [ago(a.last_push)], [a.lines.toLocaleString(), "num"],
          [a.bytes.toLocaleString(), "num"], [String(a.files), "num"], [a.bytes_behind.toLocaleString(), "num"],
          [a.version || ""], [a.last_error || ""],
        ];
        for (const [text, cls] of cells) {
          const td = document.createElement("td");
          td.textContent = text;
          if (cls) td.className = cls;
          tr.append(td);
        }
        return tr;
      }),
    );
    setStatus("agents-status", `${agents.length} agents`);
  } catch (e) {
    setStatus("agents-status", String(e.message || e), true);
  }
}

function showTab(tab) {
  state.tab = tab;
  $("logs").hidden = tab !== "logs";
  $("agents").hidden = tab !== "agents";
  $("tab-logs").setAttribute("aria-selected", String(tab === "logs"));
  $("tab-agents").setAttribute("aria-selected", String(tab === "agents"));
  writeHash();
  if (tab === "agents") loadAgents();
}

document.addEventListener("DOMContentLoaded", () => {
  readHash();
  $("token").value = sessionStorage.getItem("logfleet-token") || "";
  $("token").addEventListener("change", () => sessionStorage.setItem("logfleet-token", $("token").value.trim()));
  $("query").value = state.q;
  $("range").value = state.range in RANGES ? state.range : "1h";
  $("limit").value = state.limit;
  $("query-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const live = state.live;
    runQuery().then(() => { if (live && !state.live) startLive(); });
  });
  $("live").addEventListener("click", () => (state.live ? stopLive() : startLive()));
  $("tab-logs").addEventListener("click", () => showTab("logs"));
  $("tab-agents").addEventListener("click", () => showTab("agents"));
  $("lines").addEventListener("click", (e) => {
    const li = e.target.closest("li");
    if (li && !e.target.closest(".details")) toggleDetails(li);
  });
  $("lines").addEventListener("keydown", (e) => {
    const li = e.target.closest("li");
    if (!li) return;
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggleDetails(li); }
    if (e.key === "j" || e.key === "ArrowDown") { e.preventDefault(); li.nextElementSibling?.focus(); }
    if (e.key === "k" || e.key === "ArrowUp") { e.preventDefault(); li.previousElementSibling?.focus(); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof Element && e.target.matches("input, select, textarea")) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.key === "/") { e.preventDefault(); showTab("logs"); $("query").focus(); }
    else if (e.key === "t") { state.live ? stopLive() : startLive(); }
    else if (e.key === "a") showTab("agents");
    else if (e.key === "l") showTab("logs");
  });
  const live = state.live;
  showTab(state.tab);
  if (state.tab === "logs" && state.q) {
    state.live = false;
    runQuery().then(() => { if (live) startLive(); });
  }
});

"""The status page served at ``/``: one self-contained HTML document.

Plain HTML, CSS and vanilla JavaScript, no build step and nothing fetched
from elsewhere; embedded as a string because the package ships no data
files. Two views, switched by the URL's fragment:

``#`` (the plugins)
    A card per plugin, refreshed every two seconds from ``/plugins``: state,
    items/s now and a sparkline of the last 15 minutes (the daemon's own
    ring, `syncd.throughput`), backlog and lag, dead letters with a link to
    browse them, restarts, the last error with its time, pause / resume /
    flush buttons, and the plugin's own panel (``syncd_status_panel``) if it
    has one.
``#dead-letters/<plugin>``
    The reasons grouped with counts, the entries with their payloads, and
    requeue / purge (selected, or all) behind a confirmation.

Everything the server sends is inserted with ``textContent`` (or as SVG
attributes), never as HTML, so a payload holding markup is shown, not run.
The inline script and style are allowed by their hashes in the
Content-Security-Policy, so the page runs nothing else and talks to its own
origin only. The bearer token is asked for when a request needs it, kept in
``sessionStorage`` (for the tab, gone when it closes) and sent only here.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root { --fg: #1d1f21; --muted: #5f6368; --line: #dadce0; --bg: #f6f7f9; --ok: #17803d;
  --warn: #a15c00; --bad: #c0262d; --accent: #1a5fb4; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
  color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center;
  padding: .7rem 1rem; background: #fff; border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.15rem; margin: 0; }
header h1 a { color: inherit; text-decoration: none; }
#token-box { display: flex; gap: .4rem; align-items: center; }
#token-box.needed { outline: 2px solid var(--bad); outline-offset: 3px; border-radius: 4px; }
#token { width: 12rem; max-width: 50vw; }
#status { color: var(--muted); flex: 1 1 16rem; min-height: 1.4em; }
#status.error { color: var(--bad); font-weight: 600; }
main { padding: 1rem; max-width: 1400px; margin: 0 auto; }
#plugins { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .8rem 1rem; }
.card h2 { font-size: 1.05rem; margin: 0; display: flex; justify-content: space-between;
  align-items: baseline; gap: .5rem; }
.state { font-size: .8rem; font-weight: 600; padding: .05rem .5rem; border-radius: 99px;
  background: #eef0f2; }
.state.running { color: var(--ok); background: #e6f4ea; }
.state.paused { color: var(--warn); background: #fef3e0; }
.state.failed { color: var(--bad); background: #fce8e6; }
.state.standby { color: var(--muted); background: #eef3fb; }
.rate { display: flex; align-items: center; gap: .75rem; margin: .5rem 0; }
.rate .now { font-size: 1.5rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.rate .unit { color: var(--muted); font-size: .8rem; }
.spark-box { flex: 1; min-width: 0; }
svg.spark { display: block; width: 100%; height: 36px; }
svg.spark polyline { fill: none; stroke: var(--accent); stroke-width: 1.5; }
svg.spark .base { stroke: var(--line); stroke-width: 1; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .8rem; margin: .4rem 0; }
dt { color: var(--muted); }
dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.warn { color: var(--warn); font-weight: 600; }
.error { color: var(--bad); overflow-wrap: anywhere; }
.actions { display: flex; flex-wrap: wrap; gap: .4rem; margin-top: .6rem; }
button { font: inherit; padding: .3rem .8rem; border: 1px solid #b8bcc2; border-radius: 6px;
  background: #fff; cursor: pointer; }
button:hover { background: #f0f2f4; }
button.danger { color: var(--bad); border-color: #e4a9a6; }
button.primary { color: #fff; background: var(--accent); border-color: var(--accent); }
button:disabled { opacity: .5; cursor: default; }
.panel { border-top: 1px solid var(--line); margin-top: .7rem; padding-top: .5rem; }
.panel h3 { font-size: .95rem; margin: .2rem 0; }
.panel h4 { font-size: .85rem; margin: .5rem 0 .2rem; color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .85rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre.payload { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 10rem;
  overflow-y: auto; font-size: 12px; background: var(--bg); padding: .3rem .4rem;
  border-radius: 4px; }
.muted { color: var(--muted); font-size: .85rem; }
.toolbar { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .8rem 0; }
.section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .8rem 1rem;
  margin-bottom: 1rem; }
.section h2 { font-size: 1.05rem; margin: 0 0 .5rem; }
dialog { border: 1px solid var(--line); border-radius: 8px; max-width: min(32rem, 92vw); }
dialog::backdrop { background: rgba(0, 0, 0, .3); }
footer { color: var(--muted); font-size: .8rem; padding: 0 1rem 1rem; text-align: center; }
footer a { color: inherit; }
@media (max-width: 600px) {
  main { padding: .5rem; }
  #plugins { grid-template-columns: 1fr; }
  th.wide, td.wide { display: none; }
}
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
const tokenField = $("token");
const statusLine = $("status");
const panelsMissing = new Set();
const panelCache = new Map();
let plugins = [];
let view = {name: "plugins"};
let deadPage = {offset: 0, limit: 50};

tokenField.value = sessionStorage.getItem("syncd-token") || "";
tokenField.addEventListener("change", () => {
  sessionStorage.setItem("syncd-token", tokenField.value.trim());
  $("token-box").classList.remove("needed");
});

// -- small DOM helpers: text only, never HTML --------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  return node;
}
function say(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}
function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return Math.round(seconds) + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m " + Math.round(seconds % 60) + "s";
  if (seconds < 86400) {
    return Math.floor(seconds / 3600) + "h " + Math.round(seconds % 3600 / 60) + "m";
  }
  return (seconds / 86400).toFixed(1) + "d";
}
function when(iso) {
  if (!iso) return "-";
  const t = new Date(iso);
  return isNaN(t) ? iso : t.toLocaleString();
}
function rate(value) {
  if (value === null || value === undefined) return "-";
  return value >= 100 ? Math.round(value).toLocaleString() : value.toFixed(1);
}

// -- talking to syncd ----------------------------------------------------------------
async function send(method, path, body) {
  const headers = {};
  const token = tokenField.value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body)});
  let answer = null;
  try { answer = await response.json(); } catch (err) { answer = null; }
  if (response.status === 401) {
    $("token-box").classList.add("needed");
    tokenField.focus();
    throw new Error("401: this syncd needs its token for that. Enter it above, then try again.");
  }
  if (!response.ok) {
    const why = answer && answer.error ? answer.error : response.statusText;
    throw new Error(response.status + ": " + why);
  }
  return answer;
}

async function act(label, method, path, body, after) {
  say(label + "...");
  try {
    const answer = await send(method, path, body);
    say(label + ": done" + (after ? after(answer) : ""));
    return answer;
  } catch (err) {
    say(label + " failed: " + err.message, true);
    return null;
  } finally {
    refresh();
  }
}

function confirmThen(question, detail, run) {
  const dialog = $("confirm");
  $("confirm-question").textContent = question;
  $("confirm-detail").textContent = detail || "";
  const ok = $("confirm-ok");
  const fresh = ok.cloneNode(true);
  ok.replaceWith(fresh);
  fresh.addEventListener("click", () => { dialog.close(); run(); });
  dialog.showModal();
}
$("confirm-cancel").addEventListener("click", () => $("confirm").close());

// -- the plugins view ---------------------------------------------------------------
function sparkline(history) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 180 36");
  svg.setAttribute("preserveAspectRatio", "none");
  const values = history.slice(-180);
  const max = Math.max(1, ...values);
  const title = document.createElementNS(ns, "title");
  title.textContent = "items/s over the last " + Math.round(values.length * 5 / 60) +
    " min (peak " + rate(Math.max(0, ...values)) + "/s)";
  svg.appendChild(title);
  const base = document.createElementNS(ns, "line");
  base.setAttribute("class", "base");
  for (const [k, v] of [["x1", 0], ["x2", 180], ["y1", 35], ["y2", 35]]) base.setAttribute(k, v);
  svg.appendChild(base);
  if (values.length > 1) {
    const step = 180 / (values.length - 1);
    const points = values.map(
      (v, i) => (i * step).toFixed(1) + "," + (35 - v / max * 33).toFixed(1));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function sparkCaption(throughput) {
  const history = throughput.history || [];
  if (history.length < 2) return "history fills in every " + throughput.every_seconds + " s";
  const minutes = Math.max(1, Math.round(history.length * throughput.every_seconds / 60));
  return "last " + minutes + " min, peak " + rate(Math.max(...history)) + "/s";
}

function leaseText(lease) {
  // An exclusive plugin: this replica holds its lease, or who does.
  if (lease.held) return "held here, token " + lease.token + " since " + when(lease.since);
  if (!lease.holder) return "free (standing by)";
  return lease.holder + " holds it, token " + lease.token + " since " + when(lease.since);
}

function card(p) {
  const name = p.name;
  const dead = p.dead_letters;
  const deadText = dead ? String(dead.waiting) : "-";
  const deadNode = dead && dead.waiting > 0
    ? el("a", {href: "#dead-letters/" + encodeURIComponent(name), class: "warn"},
         deadText + " waiting, oldest " + age(dead.oldest_age_seconds))
    : el("a", {href: "#dead-letters/" + encodeURIComponent(name)}, deadText === "-" ? "-" : "none");
  const error = p.last_error
    ? el("span", {class: "error"}, p.last_error.type + ": " + p.last_error.message +
         " (" + when(p.last_error.at) + ")")
    : "-";
  const rows = [
    ["backlog", p.backlog === null ? "-" : p.backlog.toLocaleString()],
    ["lag", age(p.lag_seconds)],
    ["dead letters", deadNode],
    ["items synced", p.items_synced.toLocaleString()],
    ["restarts", p.restarts],
    ["last success", when(p.last_success)],
    ["last error", error],
  ];
  if (p.lease) rows.splice(5, 0, ["lease", leaseText(p.lease)]);
  const dl = el("dl");
  for (const [term, value] of rows) {
    dl.appendChild(el("dt", {}, term));
    dl.appendChild(el("dd", {}, value));
  }
  const actions = el("div", {class: "actions"},
    p.paused
      ? el("button", {"data-action": "resume", onclick: () => act("resume " + name, "POST",
          "plugins/" + encodeURIComponent(name) + "/resume")}, "Resume")
      : el("button", {"data-action": "pause", onclick: () => act("pause " + name, "POST",
          "plugins/" + encodeURIComponent(name) + "/pause")}, "Pause"),
    el("button", {"data-action": "flush", onclick: () => act("flush " + name, "POST",
      "plugins/" + encodeURIComponent(name) + "/flush", undefined,
      (a) => " (" + a.items + " items)")}, "Flush"));
  const throughput = p.throughput || {history: []};
  return el("section", {class: "card", "data-plugin": name},
    el("h2", {}, name, el("span", {class: "state " + p.state, "data-field": "state"},
      p.paused && p.state !== "paused" ? p.state + " (paused)" : p.state)),
    el("div", {class: "rate"},
      el("div", {}, el("div", {class: "now", "data-field": "rate"}, rate(throughput.now)),
        el("div", {class: "unit"}, "items/s now")),
      el("div", {class: "spark-box"}, sparkline(throughput.history || []),
        el("div", {class: "unit"}, sparkCaption(throughput)))),
    dl, actions, panelSlot(name));
}

function panelSlot(name) {
  // The last panel drawn right away, so the two-second refresh does not flicker.
  const slot = el("div", {class: "panel-slot"});
  if (panelCache.has(name)) renderPanel(slot, name, panelCache.get(name));
  return slot;
}

function renderPanel(slot, name, panel) {
  const box = el("div", {class: "panel"}, el("h3", {}, panel.title));
  if (panel.note) box.appendChild(el("p", {class: "muted"}, panel.note));
  for (const table of panel.tables || []) {
    box.appendChild(el("h4", {}, table.title));
    if (!table.rows.length) { box.appendChild(el("p", {class: "muted"}, table.empty)); continue; }
    const head = el("tr", {}, ...table.columns.map((c) => el("th", {}, c)));
    if (table.actions.length) head.appendChild(el("th", {}, ""));
    const body = table.rows.map((row, i) => {
      const tr = el("tr", {}, ...row.map((c) => el("td", {}, c === null ? "-" : c)));
      if (table.actions.length) tr.appendChild(el("td", {}, ...table.actions[i].map(button)));
      return tr;
    });
    box.appendChild(el("div", {class: "scroll"}, el("table", {}, el("thead", {}, head),
      el("tbody", {}, ...body))));
  }
  if ((panel.actions || []).length) {
    box.appendChild(el("div", {class: "actions"}, ...panel.actions.map(button)));
  }
  slot.replaceChildren(box);

  function button(action) {
    // A local path, made relative so the page works behind a path prefix too.
    const path = action.path.replace(/^\\/+/, "");
    const run = () => act(action.label, "POST", path);
    return el("button", {onclick: () => action.confirm
      ? confirmThen(action.confirm, action.label + " (" + name + ")", run) : run()}, action.label);
  }
}

async function loadPanels() {
  for (const p of plugins) {
    if (panelsMissing.has(p.name)) continue;
    const slot = document.querySelector(
      'section[data-plugin="' + CSS.escape(p.name) + '"] .panel-slot');
    if (!slot) continue;
    try {
      const response = await fetch("plugins/" + encodeURIComponent(p.name) + "/panel",
                                   {cache: "no-store"});
      if (response.status === 404) { panelsMissing.add(p.name); continue; }
      if (response.ok) {
        const panel = await response.json();
        panelCache.set(p.name, panel);
        renderPanel(slot, p.name, panel);
      }
    } catch (err) { /* shown again on the next refresh */ }
  }
}

function renderPlugins() {
  const box = $("plugins");
  box.replaceChildren(...plugins.map(card));
  if (!plugins.length) box.appendChild(el("p", {class: "muted"}, "No plugin is enabled."));
  loadPanels();
}

// -- the dead-letter view -------------------------------------------------------------
async function renderDead(name) {
  const base = "plugins/" + encodeURIComponent(name) + "/dead-letters";
  const box = $("dead");
  let page, reasons;
  try {
    [page, reasons] = await Promise.all([
      send("GET", base + "?limit=" + deadPage.limit + "&offset=" + deadPage.offset),
      send("GET", base + "/reasons")]);
  } catch (err) {
    box.replaceChildren(el("p", {class: "error"}, err.message));
    return;
  }
  const selected = new Set();
  const count = el("span", {class: "muted", id: "selected-count"}, "none selected");
  const selectedButtons = [];
  function updateSelection() {
    count.textContent = selected.size ? selected.size + " selected" : "none selected";
    for (const b of selectedButtons) b.disabled = selected.size === 0;
  }
  function run(verb, body, label) {
    confirmThen(label + "?", verb === "purge"
      ? "Purged dead letters are deleted for good."
      : "Each item goes back where it came from, once; items that cannot go back stay here.",
      async () => {
        const answer = await act(label, "POST", base + "/" + verb, body, (a) => {
          let text = " (" + (verb === "purge" ? a.purged : a.requeued) + " " + verb + "d";
          if (a.refused_count) text += ", " + a.refused_count + " refused: " + a.refused[0].reason;
          if (a.gone) text += ", " + a.gone + " already gone";
          return text + ")";
        });
        if (answer) renderDead(name);
      });
  }
  const requeueSelected = el("button", {class: "primary", "data-action": "requeue-selected",
    onclick: () => run("requeue", {ids: [...selected]},
                       "Requeue " + selected.size + " dead letter(s)")},
    "Requeue selected");
  const purgeSelected = el("button", {class: "danger", "data-action": "purge-selected",
    onclick: () => run("purge", {ids: [...selected]},
                       "Purge " + selected.size + " dead letter(s)")},
    "Purge selected");
  selectedButtons.push(requeueSelected, purgeSelected);
  const all = page.total;
  const toolbar = el("div", {class: "toolbar"},
    requeueSelected, purgeSelected, count,
    el("button", {"data-action": "requeue-all", disabled: !all,
      onclick: () => run("requeue", {all: true}, "Requeue all " + all + " dead letters")},
      "Requeue all"),
    el("button", {class: "danger", "data-action": "purge-all", disabled: !all,
      onclick: () => run("purge", {all: true}, "Purge all " + all + " dead letters")}, "Purge all"),
    el("button", {onclick: () => renderDead(name)}, "Reload"));

  const reasonRows = reasons.reasons.map((r) => el("tr", {},
    el("td", {class: "num"}, r.count), el("td", {}, r.reason),
    el("td", {class: "wide muted"}, r.example)));
  const reasonTable = reasonRows.length
    ? el("div", {class: "scroll"}, el("table", {id: "reasons"},
        el("thead", {}, el("tr", {}, el("th", {}, "count"), el("th", {}, "reason"),
          el("th", {class: "wide"}, "example"))),
        el("tbody", {}, ...reasonRows)))
    : el("p", {class: "muted"}, "No dead letters.");

  const itemRows = page.items.map((item) => {
    const box = el("input", {type: "checkbox", "aria-label": "select " + item.id});
    box.addEventListener("change", () => {
      if (box.checked) selected.add(item.id); else selected.delete(item.id);
      updateSelection();
    });
    const payload = item.payload !== undefined
      ? item.payload : "(binary, base64) " + item.payload_b64;
    const goes = item.requeue.ok ? "back by " + item.requeue.to.join("; ")
                                 : "cannot requeue: " + item.requeue.reason;
    return el("tr", {"data-id": item.id},
      el("td", {}, box),
      el("td", {}, el("div", {}, item.reason),
        el("div", {class: item.requeue.ok ? "muted" : "warn"}, goes),
        el("div", {class: "muted"}, item.id + " \\u00b7 " + item.list)),
      el("td", {class: "payload-cell"}, el("pre", {class: "payload"}, payload)),
      el("td", {class: "num", title: item.at_iso}, age(item.age_seconds)));
  });
  const pager = el("div", {class: "toolbar"},
    el("button", {disabled: deadPage.offset === 0, onclick: () => {
      deadPage.offset = Math.max(0, deadPage.offset - deadPage.limit);
      renderDead(name);
    }}, "Newer"),
    el("span", {class: "muted"}, all ? (deadPage.offset + 1) + "-" +
      (deadPage.offset + page.items.length) + " of " + all : ""),
    el("button", {disabled: deadPage.offset + page.items.length >= all, onclick: () => {
      deadPage.offset += deadPage.limit; renderDead(name); }}, "Older"));
  const list = page.items.length
    ? el("div", {class: "scroll"}, el("table", {id: "dead-items"},
        el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {}, "reason"),
          el("th", {}, "payload"), el("th", {}, "age"))),
        el("tbody", {}, ...itemRows)))
    : el("p", {class: "muted"}, "Nothing here.");

  box.replaceChildren(
    el("p", {}, el("a", {href: "#"}, "\\u2190 all plugins")),
    el("div", {class: "section"},
      el("h2", {}, "Dead letters of " + name),
      el("p", {class: "muted", id: "dead-summary"}, all + " waiting in " + page.lists.join(", ") +
        (page.oldest_age_seconds !== null
          ? ", oldest " + age(page.oldest_age_seconds) + " old" : "") +
        (page.requeue_supported ? "" : " \\u00b7 this plugin does not say how its items go back")),
      el("h2", {}, "Reasons"), reasonTable,
      reasons.scanned < reasons.total
        ? el("p", {class: "muted"}, "counted over the newest " + reasons.scanned) : null),
    el("div", {class: "section"}, el("h2", {}, "Items"), toolbar, list, pager));
  updateSelection();
}

// -- routing and polling -----------------------------------------------------------------
function route() {
  const match = location.hash.match(/^#dead-letters\\/(.+)$/);
  const next = match ? {name: "dead", plugin: decodeURIComponent(match[1])} : {name: "plugins"};
  if (next.name === "dead" && (view.name !== "dead" || view.plugin !== next.plugin)) {
    deadPage.offset = 0;
  }
  view = next;
  $("plugins").hidden = view.name !== "plugins";
  $("dead").hidden = view.name !== "dead";
  if (view.name === "dead") renderDead(view.plugin); else renderPlugins();
}
window.addEventListener("hashchange", route);

async function refresh() {
  try {
    const response = await fetch("plugins", {cache: "no-store"});
    plugins = await response.json();
    $("updated").textContent = new Date().toLocaleTimeString();
  } catch (err) {
    say("syncd is not answering: " + err, true);
    return;
  }
  if (view.name === "plugins" && !$("confirm").open) renderPlugins();
}

route();
refresh();
setInterval(refresh, 2000);
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>syncd</title>
<style>{STYLE}</style>
</head>
<body>
<header>
  <h1><a href="#">syncd</a></h1>
  <div id="token-box"><label for="token">Token</label>
    <input id="token" type="password" autocomplete="off" placeholder="if http.token is set"></div>
  <div id="status" role="status" aria-live="polite"></div>
</header>
<main>
  <div id="plugins"></div>
  <div id="dead" hidden></div>
</main>
<dialog id="confirm">
  <p><strong id="confirm-question"></strong></p>
  <p id="confirm-detail" class="muted"></p>
  <div class="actions"><button id="confirm-ok" class="primary">Yes, do it</button>
    <button id="confirm-cancel">Cancel</button></div>
</dialog>
<footer>updated <span id="updated">never</span> &middot;
  <a href="health/ready">readiness</a> &middot; <a href="metrics">metrics</a></footer>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


#: Only this page's own script and style may run; it may talk to its own origin only.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

"""The status page served at ``/``: one self-contained HTML document.

Plain HTML and a little vanilla JavaScript that polls ``/plugins`` every two
seconds. It is embedded as a string because the package ships no data files.
Everything the server sends is inserted with ``textContent``, never as HTML,
and the inline script is allowed by its hash in the Content-Security-Policy,
so the page runs nothing else. A bearer token typed into the page stays in
``sessionStorage`` (gone when the tab closes) and is sent only to this origin.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .5rem; }
table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #ddd; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { font-weight: 600; }
.running { color: #17803d; } .paused { color: #a66300; } .failed { color: #c0262d; }
.starting, .stopping, .stopped { color: #666; }
.error { color: #c0262d; font-size: 12px; max-width: 28rem; overflow-wrap: anywhere; }
#status { margin-left: 1rem; color: #666; }
button { margin-right: .25rem; }
"""

SCRIPT = """
"use strict";
const tokenField = document.getElementById("token");
const statusLine = document.getElementById("status");
const rows = document.getElementById("rows");
const previous = new Map();
tokenField.value = sessionStorage.getItem("syncd-token") || "";
tokenField.addEventListener("change", () => {
  sessionStorage.setItem("syncd-token", tokenField.value);
});

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (className) td.className = className;
  return td;
}

async function act(name, action) {
  const headers = {};
  if (tokenField.value) headers["Authorization"] = "Bearer " + tokenField.value;
  statusLine.textContent = action + " " + name + "...";
  try {
    const response = await fetch("plugins/" + encodeURIComponent(name) + "/" + action,
                                 {method: "POST", headers: headers});
    const body = await response.json();
    statusLine.textContent = response.ok
      ? action + " " + name + ": done" + (action === "flush" ? " (" + body.items + " items)" : "")
      : action + " " + name + ": " + response.status + " " + body.error;
  } catch (err) {
    statusLine.textContent = action + " " + name + ": " + err;
  }
  refresh();
}

function button(label, name, action) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", () => act(name, action));
  return b;
}

async function refresh() {
  let plugins;
  try {
    const response = await fetch("plugins", {cache: "no-store"});
    plugins = await response.json();
  } catch (err) {
    statusLine.textContent = "syncd is not answering: " + err;
    return;
  }
  const now = performance.now();
  rows.replaceChildren();
  for (const p of plugins) {
    const before = previous.get(p.name);
    let rate = null;
    if (before && now > before.at) {
      rate = ((p.items_synced - before.items) * 1000 / (now - before.at)).toFixed(1) + "/s";
    }
    previous.set(p.name, {items: p.items_synced, at: now});
    const tr = document.createElement("tr");
    tr.appendChild(cell(p.name));
    tr.appendChild(cell(p.state, "state " + p.state));
    tr.appendChild(cell(p.items_synced, "num"));
    tr.appendChild(cell(rate, "num"));
    tr.appendChild(cell(p.backlog, "num"));
    tr.appendChild(cell(p.last_success));
    tr.appendChild(cell(p.last_error ? p.last_error.type + ": " + p.last_error.message : null,
                        "error"));
    const actions = document.createElement("td");
    actions.appendChild(p.paused ? button("resume", p.name, "resume")
                                 : button("pause", p.name, "pause"));
    actions.appendChild(button("flush", p.name, "flush"));
    tr.appendChild(actions);
    rows.appendChild(tr);
  }
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}

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
<h1>syncd</h1>
<div>
  <label>Token <input id="token" type="password" autocomplete="off"
    placeholder="only if http.token is set"></label>
  <span id="status"></span>
</div>
<table>
  <thead><tr><th>plugin</th><th>state</th><th>items synced</th><th>rate</th><th>backlog</th>
    <th>last success</th><th>last error</th><th></th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<p><small>updated <span id="updated">never</span> &middot;
  <a href="health/ready">readiness</a> &middot; <a href="metrics">metrics</a></small></p>
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

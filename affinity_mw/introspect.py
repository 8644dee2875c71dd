"""The introspection path: who owns a key, do nodes agree on the ring, how much traffic is local.

``GET /_affinity`` is a self-contained HTML status page (no external assets: it works offline and behind
strict CSPs) when a browser asks, JSON otherwise; ``/_affinity/status.json`` is the JSON; ``?key=K`` answers
who owns ``K`` and the failover order; ``/_affinity/metrics`` is Prometheus text, ``/_affinity/metrics.json``
the same numbers as JSON.

Access is limited (``AFFINITY_INTROSPECTION``): by default only requests signed with the cluster secret (the
``affinity-mw check`` command signs its requests) are answered; configured networks or ``on`` open it further.
Everyone else gets the app's own answer for that path, as if it did not exist: the member list and counters are
not for the public.
"""

from __future__ import annotations

import html
import ipaddress
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from itsdangerous import BadData, TimestampSigner

__all__ = ["AUTH_HEADER", "Introspection", "sign_request"]

AUTH_HEADER = "x-affinity-auth"
_SALT = "affinity-mw.introspect.v1"
Answer = tuple[int, bytes, str]


def sign_request(secret_keys: str | list[str] | tuple[str, ...]) -> str:
    """The ``X-Affinity-Auth`` value that opens the introspection path of nodes sharing this secret (60 s)."""
    keys = [secret_keys] if isinstance(secret_keys, str) else list(secret_keys)
    return TimestampSigner(keys, salt=_SALT).sign("introspect").decode()


class Introspection:
    """The introspection path's answers, from what it reads: settings, membership, peer health, metrics, and
    whether this node drains."""

    def __init__(
        self,
        *,
        settings: Any,
        membership: Any,
        health: Any,
        metrics: Any,
        draining: Callable[[], bool],
        ownership: Callable[[], list[dict[str, Any]]] = list,
        websockets: Callable[[], int] = int,
    ) -> None:
        self.ownership = ownership
        self.websockets = websockets
        self.membership = membership
        self.health = health
        self.metrics = metrics
        self.draining = draining
        self.path = settings.introspection_path.rstrip("/")
        parts = [p.strip().lower() for p in settings.introspection.split(",") if p.strip()]
        self.off = "off" in parts
        self.public = "on" in parts
        self.networks = [ipaddress.ip_network(p, strict=False) for p in parts if p not in ("signed", "on", "off")]
        self._signer = TimestampSigner(list(settings.secret), salt=_SALT) if settings.secret else None

    def matches(self, path: str) -> bool:
        return bool(self.path) and (path == self.path or path.startswith(self.path + "/"))

    def signed(self, auth: str | None) -> bool:
        """True for an ``X-Affinity-Auth`` value signed with the cluster secret in the last 60 s."""
        if not auth or self._signer is None:
            return False
        try:
            self._signer.unsign(auth, max_age=60)
            return True
        except BadData:
            return False

    def allowed(self, client_host: str | None, auth: str | None) -> bool:
        if self.off:
            return False
        if self.public or self.signed(auth):
            return True
        if client_host and self.networks:
            try:
                address = ipaddress.ip_address(client_host)
            except ValueError:
                return False
            return any(address in network for network in self.networks)
        return False

    def respond(
        self, method: str, path: str, query: str, client_host: str | None, header: Callable[[str], str | None]
    ) -> Answer | None:
        """The answer for an introspection request, or ``None`` to let the app answer (not ours, not allowed)."""
        if not self.matches(path) or not self.allowed(client_host, header(AUTH_HEADER)):
            return None
        if method not in ("GET", "HEAD"):
            return 405, b'{"error": "use GET"}\n', "application/json"
        sub = path[len(self.path) :]
        if sub == "/metrics":
            try:
                return 200, self.metrics.prometheus_text(), "text/plain; version=0.0.4; charset=utf-8"
            except ImportError:
                return (
                    501,
                    b"Prometheus text needs prometheus_client: pip install 'affinity-mw[prometheus]'\n",
                    "text/plain",
                )
        if sub == "/metrics.json":
            return _json(self.metrics.snapshot())
        if sub not in ("", "/", "/status.json"):
            return 404, b'{"error": "unknown introspection path"}\n', "application/json"
        key = parse_qs(query).get("key", [None])[0]
        if key is not None:
            return _json(self.owner_of(key))
        if sub == "" and "text/html" in (header("accept") or ""):
            return 200, render_page(self.status(), self.path).encode(), "text/html; charset=utf-8"
        return _json(self.status())

    def owner_of(self, key: str) -> dict[str, Any]:
        self_id = self.membership.self_id
        ring = self.membership.ring
        key_hash = ring.key_hash(key)
        order = ring.successors(key_hash)
        usable = [n.id for n in order if n.id == self_id or self.health.usable(n.id)]
        return {
            "key": key,
            "key_hash": f"{key_hash:016x}",
            "owner": order[0].id if order else None,
            "failover_order": [n.id for n in order],
            "serves_now": usable[0] if usable else None,
            "ring_checksum": ring.checksum,
            "asked": self_id,
        }

    def status(self) -> dict[str, Any]:
        self_id = self.membership.self_id
        draining = self.draining()
        ring = self.membership.ring
        shares = ring.shares()
        set_aside = self.health.ejected()
        members = []
        for node in ring.nodes:
            state = set_aside.get(node.id, "ok")
            if node.id == self_id:
                state = "draining" if draining else "self"
            members.append(
                {
                    "id": node.id,
                    "address": node.address,
                    "weight": node.weight,
                    "share": round(shares.get(node.id, 0.0), 6),
                    "health": state,
                }
            )
        metrics = self.metrics.snapshot()
        return {
            "node": self_id,
            "status": "draining" if draining else "ok",
            "ring": {"checksum": ring.checksum, "vnodes": ring.vnodes, "members": members},
            "counters": metrics["counters"],
            "locality_ratio": metrics["locality_ratio"],
            "edge_agreement": metrics["edge_agreement"],
            "peer_ejections": metrics["peer_ejections"],
            "membership": getattr(self.membership, "stats", None),
            "websockets_open": self.websockets(),
            "ownership_changes": self.ownership(),
            "hot_keys": metrics["hot_keys"],
            "balance": metrics["balance"],
            "shadow": metrics["shadow"],
        }


def _json(data: dict[str, Any]) -> Answer:
    return 200, json.dumps(data, indent=1).encode() + b"\n", "application/json"


_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")


def render_page(status: dict[str, Any], base: str) -> str:
    """The status page: the status is embedded in the page and drawn by a small inline script (so the first
    paint needs no second request), then refreshed from ``status.json`` every 2 s when the browser may fetch it."""
    # Inside <script> nothing is entity-decoded: escape the characters that could end the element instead.
    data = json.dumps(status).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        _PAGE.replace("__DATA__", data)
        .replace("__BASE__", html.escape(base))
        .replace("__COLORS__", json.dumps(_COLORS))
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>affinity-mw status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
 h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
 .grid{display:grid;grid-template-columns:260px 1fr;gap:24px;align-items:start}
 table{border-collapse:collapse;width:100%;background:#fff}
 th,td{padding:6px 10px;border-bottom:1px solid #eee;text-align:left}
 th{font-weight:600;color:#555} .bar{height:10px;background:#ddd;border-radius:5px;overflow:hidden;min-width:120px}
 .bar>span{display:block;height:100%} .ok{color:#2a7d2a} .bad{color:#b3261e} .self{color:#1a5fb4;font-weight:600}
 .counters{display:flex;flex-wrap:wrap;gap:10px;margin-top:18px}
 .counter{background:#fff;border:1px solid #eee;border-radius:6px;padding:8px 12px;min-width:110px}
 .counter b{display:block;font-size:18px} code{background:#eee;padding:1px 4px;border-radius:3px}
</style></head><body>
<h1>affinity-mw</h1>
<div class="sub">node <code id="node"></code> &middot; status <b id="status"></b> &middot; ring checksum
 <code id="checksum"></code> &middot; locality <b id="locality"></b> &middot; edge agreement
 <b id="edge"></b></div>
<div class="grid">
 <svg id="ring" viewBox="-110 -110 220 220" width="240" height="240" role="img" aria-label="ring shares"></svg>
 <table><thead><tr><th>member</th><th>health</th><th>weight</th><th>share of keys</th><th></th></tr></thead>
 <tbody id="members"></tbody></table>
</div>
<div class="counters" id="counters"></div>
<h2 style="font-size:16px;margin:18px 0 6px">Recent ownership changes &middot; <span id="websockets"></span>
 open websockets</h2>
<table><thead><tr><th>when (UTC)</th><th>ring</th><th>keys gained</th><th>keys lost</th></tr></thead>
<tbody id="changes"></tbody></table>
<h2 style="font-size:16px;margin:20px 0 6px">hot keys <span class="sub" id="balance"></span></h2>
<table><thead><tr><th>key</th><th>share of recent requests</th><th>spilled</th></tr></thead>
<tbody id="hot"></tbody></table>
<div class="sub" id="shadow"></div>
<script id="initial" type="application/json">__DATA__</script>
<script>
const COLORS = __COLORS__;
function el(tag, attrs, text, ns){
 const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
 for (const k in attrs) e.setAttribute(k, attrs[k]);
 if (text !== undefined) e.textContent = text;
 return e;
}
const SVG = "http://www.w3.org/2000/svg";
function render(s){
 document.getElementById("node").textContent = s.node || "(not a member)";
 const st = document.getElementById("status"); st.textContent = s.status;
 st.className = s.status === "ok" ? "ok" : "bad";
 document.getElementById("checksum").textContent = s.ring.checksum;
 document.getElementById("locality").textContent =
   s.locality_ratio === null ? "n/a" : (100 * s.locality_ratio).toFixed(1) + "%";
 document.getElementById("edge").textContent =
   s.edge_agreement === null ? "n/a" : (100 * s.edge_agreement).toFixed(1) + "%";
 const body = document.getElementById("members"); body.replaceChildren();
 const svg = document.getElementById("ring"); svg.replaceChildren();
 let angle = -Math.PI / 2;
 s.ring.members.forEach((m, i) => {
  const color = COLORS[i % COLORS.length], tr = el("tr", {"data-member": m.id});
  tr.appendChild(el("td", {}, m.id));
  const health = el("td", {}, m.health);
  health.className = m.health === "ok" ? "ok" : (m.health === "self" ? "self" : "bad");
  tr.appendChild(health); tr.appendChild(el("td", {}, String(m.weight)));
  tr.appendChild(el("td", {}, (100 * m.share).toFixed(1) + "%"));
  const bar = el("div", {class: "bar"});
  const fill = el("span", {style: "width:" + (100 * m.share) + "%;background:" + color});
  bar.appendChild(fill); const td = el("td"); td.appendChild(bar); tr.appendChild(td); body.appendChild(tr);
  const sweep = 2 * Math.PI * m.share, end = angle + sweep, large = sweep > Math.PI ? 1 : 0;
  const p = (a, r) => (r * Math.cos(a)).toFixed(2) + " " + (r * Math.sin(a)).toFixed(2);
  const d = s.ring.members.length === 1 ? "M 0 -100 A 100 100 0 1 1 -0.01 -100 L 0 -60 A 60 60 0 1 0 0.01 -60 Z"
    : "M " + p(angle, 100) + " A 100 100 0 " + large + " 1 " + p(end, 100) + " L " + p(end, 60) +
      " A 60 60 0 " + large + " 0 " + p(angle, 60) + " Z";
  const arc = el("path", {d: d, fill: color}, undefined, SVG);
  arc.appendChild(el("title", {}, m.id + ": " + (100 * m.share).toFixed(1) + "%", SVG));
  svg.appendChild(arc); angle = end;
 });
 // Lets a test (or a curious operator) see that the chart really is SVG the browser drew.
 svg.setAttribute("data-arcs", String(svg.querySelectorAll("path").length));
 svg.setAttribute("data-svg", String(svg.querySelector("path") instanceof SVGPathElement));
 const counters = document.getElementById("counters"); counters.replaceChildren();
 for (const [k, v] of Object.entries(s.counters)) {
  const c = el("div", {class: "counter", "data-counter": k}); c.appendChild(el("b", {}, String(v)));
  c.appendChild(document.createTextNode(k.replace(/_/g, " "))); counters.appendChild(c);
 }
 document.getElementById("websockets").textContent = String(s.websockets_open || 0);
 const changes = document.getElementById("changes"); changes.replaceChildren();
 const pct = f => f === null ? "n/a" : (100 * f).toFixed(1) + "%";
 (s.ownership_changes || []).slice().reverse().forEach(c => {
  const tr = el("tr", {"data-change": c.new_ring});
  tr.appendChild(el("td", {}, new Date(1000 * c.at).toISOString().replace("T", " ").slice(0, 19)));
  tr.appendChild(el("td", {}, (c.old_ring || "none") + " -> " + c.new_ring));
  tr.appendChild(el("td", {}, pct(c.gained_fraction))); tr.appendChild(el("td", {}, pct(c.lost_fraction)));
  changes.appendChild(tr);
 });
 const hot = document.getElementById("hot"); hot.replaceChildren();
 for (const h of (s.hot_keys || [])) {
  const tr = el("tr", {"data-hot": h.key}); tr.appendChild(el("td", {}, h.key));
  tr.appendChild(el("td", {}, (100 * h.share).toFixed(1) + "%")); tr.appendChild(el("td", {}, String(h.spilled)));
  hot.appendChild(tr);
 }
 const b = s.balance;
 document.getElementById("balance").textContent = b ? "bounded loads: factor " + b.factor + ", " + b.in_flight +
   " in flight, spilled to " + JSON.stringify(b.spilled_to) : "bounded loads off";
 const sh = s.shadow;
 document.getElementById("shadow").textContent = sh ? "shadow mode: " + sh.keyed_requests +
   " keyed requests; locality today " + (100 * (sh.locality_today || 0)).toFixed(1) + "%, with routing " +
   (100 * (sh.locality_routed || 0)).toFixed(1) + "%; busiest node " + sh.busiest_over_mean + " x the mean" : "";
}
render(JSON.parse(document.getElementById("initial").textContent));
setInterval(() => fetch("__BASE__/status.json", {cache: "no-store"}).then(r => r.ok ? r.json() : null)
  .then(s => s && render(s)).catch(() => {}), 2000);
</script></body></html>
"""

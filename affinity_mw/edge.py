"""Front-proxy configuration that agrees with the nodes: ``affinity-mw edge nginx``.

With ``AFFINITY_RING=nginx`` the nodes place keys exactly as nginx's ``hash $key consistent`` does
(``affinity_mw/ring/_nginx.py``). What remains is to give nginx the same members, spelled the same way, and the
same key, computed from the same part of the request. This module writes both from the settings the nodes run
with, so an nginx in front sends every request straight to its owner and no request takes a hop.

Where nginx cannot compute the key the way the key sources do (a verified JWT claim, a signed cookie, an
``ip`` behind proxies nginx does not know, a user function), the configuration says so and leaves nginx's key
empty for those requests: nginx then balances them round robin and the middleware routes them, one hop at most.
The middleware stays the guarantee either way: a request nginx sends to the wrong node is forwarded once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .keys._spec import _split_spec
from .ring import Node, Ring, nginx_server

__all__ = ["EdgeKey", "nginx_config", "nginx_key", "routing_settings"]

KEY_VARIABLE = "$affinity_mw_key"
"""The nginx variable the generated ``map`` blocks leave the affinity key in."""

_NGINX_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_NGINX_ARG_RE = re.compile(r"[A-Za-z0-9_]+")


def routing_settings(options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The nodes' settings as a router outside them needs them: membership, ring and key sources.

    A front proxy or a client transport signs nothing, so the cluster secret is not required here (a stand-in
    satisfies the check when it is absent); everything else is validated exactly as the nodes validate it.
    """
    options = dict(options or {})
    env = dict(os.environ if environ is None else environ)
    if not options.get("secret") and not env.get("AFFINITY_SECRET", "").strip():
        options["secret"] = "-" * 32
    return Settings.load(options, env)


@dataclass
class EdgeKey:
    """How nginx computes the key: ``map`` blocks for the ``http`` context, the variable, and what it cannot do."""

    maps: list[str] = field(default_factory=list)
    variable: str = ""
    notes: list[str] = field(default_factory=list)
    needs_underscores: bool = False


def _path_regex(pattern: str) -> str:
    """The PCRE nginx's ``map`` matches ``$uri`` with, for a ``path:`` source (a template or ``re:``)."""
    from .keys._plain import compile_template

    source = pattern[3:] if pattern.startswith("re:") else compile_template(pattern).pattern
    # Python's (?P<key>...) is PCRE syntax too; a longer name keeps nginx's capture variable out of the way of
    # the user's own $key.
    return source.replace("(?P<key>", "(?P<affinity_mw_path_key>")


def _source(part: str, index: int, trusted_proxies: int) -> tuple[str | None, list[str], str]:
    """One ``AFFINITY_KEY`` source as ``(nginx variable or None, map blocks, note)``."""
    kind, _, rest = part.partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if kind == "header":
        if not _NGINX_NAME_RE.fullmatch(rest):
            return None, [], f"the header name {rest!r} has characters nginx variables cannot name"
        return "$http_" + rest.lower().replace("-", "_"), [], ""
    if kind == "cookie":
        if not _NGINX_ARG_RE.fullmatch(rest):
            return None, [], f"nginx's $cookie_ variables cannot name the cookie {rest!r}"
        return "$cookie_" + rest, [], ""
    if kind == "query":
        if not _NGINX_ARG_RE.fullmatch(rest):
            return None, [], f"nginx's $arg_ variables cannot name the query parameter {rest!r}"
        return "$arg_" + rest, [], ""
    if kind == "path":
        regex = _path_regex(rest)
        if '"' in regex or "\\\\" in regex:
            return None, [], f"the path pattern {rest!r} cannot be quoted in nginx's configuration"
        variable = f"$affinity_mw_path_{index}"
        block = f'map $uri {variable} {{\n    "~{regex}" $affinity_mw_path_key;\n    default "";\n}}'
        return variable, [block], ""
    if kind == "ip":
        note = (
            "ip: nginx hashes $remote_addr, the address it sees; the nodes see nginx, so set "
            f"AFFINITY_TRUSTED_PROXIES={trusted_proxies + 1} (one more for nginx) and keep X-Forwarded-For below"
        )
        return "$remote_addr", [], note
    why = {
        "jwt": "a verified JWT claim needs the signature checked, which nginx cannot do",
        "signed-cookie": "a signed cookie needs its signature checked, which nginx cannot do",
        "region": "a region is lower-cased and validated first, which nginx cannot do",
    }.get(kind, f"nginx cannot compute {kind!r}")
    return None, [], why


def nginx_key(spec: object, trusted_proxies: int = 0) -> EdgeKey:
    """Translate an ``AFFINITY_KEY`` spec to nginx: the variable holding the key, built from ``map`` blocks.

    Sources are tried in order, as the middleware tries them: each ``map`` takes the next source when the one
    before is empty. The chain stops at the first source nginx cannot compute, because nginx cannot know
    whether that source would have given the middleware a key; requests that reach it get an empty key
    (round robin in nginx, routed by the middleware).
    """
    edge = EdgeKey()
    if not isinstance(spec, str):
        edge.notes.append("the key is a Python function: nginx cannot compute it; the middleware routes")
        return edge
    variables: list[str] = []
    for index, part in enumerate(_split_spec(spec), start=1):
        variable, maps, note = _source(part, index, trusted_proxies)
        if variable is None:
            edge.notes.append(f"{part}: {note}; requests without an earlier key are routed by the middleware")
            break
        if note:
            edge.notes.append(note)
        if "_" in part.partition(":")[2] and part.strip().lower().startswith("header:"):
            edge.needs_underscores = True
        variables.append(variable)
        edge.maps += maps
    if not variables:
        return edge
    chained = variables[-1]
    for i in range(len(variables) - 2, -1, -1):
        name = KEY_VARIABLE if i == 0 else f"{KEY_VARIABLE}_{i + 1}"
        edge.maps.append(f'map {variables[i]} {name} {{\n    "" {chained};\n    default {variables[i]};\n}}')
        chained = name
    if chained != KEY_VARIABLE:
        edge.maps.append(f"map {chained} {KEY_VARIABLE} {{\n    default {chained};\n}}")
    edge.variable = KEY_VARIABLE
    return edge


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def nginx_config(
    ring: Ring,
    spec: object,
    *,
    upstream: str = "affinity_mw",
    trusted_proxies: int = 0,
    listen: str | None = None,
    source: str = "",
    keepalive: int = 32,
    keepalive_timeout: float = 1.5,
    notes: Sequence[str] = (),
) -> str:
    """The nginx configuration for ``ring``'s members and the key ``spec``: ``map`` and ``upstream`` blocks for
    the ``http`` context, then the proxy settings for a ``location`` (inside a whole ``server`` when ``listen``
    is given). ``source`` is a comment naming where the member list came from. ``keepalive_timeout`` is how long
    nginx keeps an idle connection to a node (``AFFINITY_KEEPALIVE``): shorter than the servers' own keep-alive
    (gunicorn 2 s, uvicorn 5 s), so nginx never sends on a connection the node is closing; such a send fails, and
    nginx (``max_fails=1`` by default) would then set the node aside for 10 s and send its keys elsewhere."""
    edge = nginx_key(spec, trusted_proxies)
    notes = [*notes, *edge.notes]
    if ring.algorithm != "nginx":
        notes.insert(
            0,
            f"the nodes run AFFINITY_RING={ring.algorithm}: set AFFINITY_RING=nginx on every node, or nginx and the "
            "nodes disagree about most owners (the middleware still routes each request, with a hop)",
        )
    lines = ["# affinity-mw: generated by `affinity-mw edge nginx`; regenerate when the members change."]
    if source:
        lines.append(f"# Members: {source}")
    lines += [f"# NOTE: {note}." for note in notes]
    lines.append("")
    lines.append("# --- in the http { } context")
    for block in edge.maps:
        lines += [block, ""]
    lines.append(f"upstream {upstream} {{")
    if edge.variable:
        lines.append(f"    hash {edge.variable} consistent;")
    else:
        lines.append("    # no hash: nginx cannot compute the key (see the notes), so it balances; the nodes route")
    if not ring.nodes:
        lines.append("    # no members yet: nginx refuses an empty upstream; this placeholder answers 502")
        lines.append("    server 127.0.0.1:1 down;")
    # Servers in ring order: nginx breaks a tie between equal points in favour of the server written first.
    for node in ring.nodes:
        weight = f" weight={node.weight}" if node.weight != 1 else ""
        # nginx resolves a name once, at load: the address in a comment changes the file (and so triggers a
        # reload in a regenerate-and-compare loop) when a member's address does.
        now = f"  # now {nginx_server(Node(node.address, node.address))}" if node.address != node.id else ""
        lines.append(f"    server {nginx_server(node)}{weight};{now}")
    lines += [f"    keepalive {keepalive};", f"    keepalive_timeout {round(keepalive_timeout * 1000)}ms;", "}", ""]
    location = _location(upstream, ring.nodes)
    if listen is not None:
        server = ["server {", f"    listen {listen};"]
        if edge.needs_underscores:
            server.append("    underscores_in_headers on;  # the key header's name has an underscore")
        server += ["    location / {", _indent(location, 8), "    }", "}"]
        lines += server
    else:
        lines.append(
            "# --- in your server { } block" + (" (with: underscores_in_headers on;)" * edge.needs_underscores)
        )
        lines += ["location / {", _indent(location, 4), "}"]
    return "\n".join(lines) + "\n"


def _location(upstream: str, nodes: Sequence[Node]) -> str:
    scheme = "https" if any(n.id.startswith("https://") for n in nodes) else "http"
    return "\n".join(
        [
            f"proxy_pass {scheme}://{upstream};",
            "# Keep-alive to the nodes: HTTP/1.1 and no Connection header from the client.",
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "# The nodes see the client's Host, and its address through one trusted proxy hop.",
            "proxy_set_header Host $host;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "# A hop marker only ever comes from a node; one from a client is dropped here (the nodes reject it too).",
            'proxy_set_header X-Affinity-Hop "";',
            "# Streamed request and response bodies, as the nodes stream them when they forward.",
            "proxy_request_buffering off;",
            "proxy_buffering off;",
            "# A node that refuses a connection: nginx tries the key's next owner, as the nodes would.",
            "proxy_next_upstream error timeout;",
        ]
    )

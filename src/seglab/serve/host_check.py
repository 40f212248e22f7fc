"""Requests to a server without a token must name a loopback host: no DNS rebinding.

A server on 127.0.0.1 without a token trusts whoever reaches it, and a web page can reach it:
it points a name of its own at 127.0.0.1 (DNS rebinding) and reads the answers as same-origin,
the model, the run folders and their reports included. Such requests carry the page's name in
their Host header, so a server without a token answers only requests whose Host is localhost or
a loopback address; with a token (or an explicit --no-auth) the check is off.
"""
from __future__ import annotations

import json

from seglab.serve.options import is_loopback


def host_name(header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'localhost' -> 'localhost'."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class LoopbackHostOnly:
    """ASGI middleware: HTTP requests whose Host header is not loopback get a 421 with one line of JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1").strip().lower()
            if header and not is_loopback(host_name(header)):  # browsers always send Host
                await _refuse(send, header)
                return
        await self.app(scope, receive, send)


async def _refuse(send, header: str) -> None:
    shown = header[:80]
    body = json.dumps({"error": f"this server answers requests for localhost only, not for host {shown!r} (a web "
                                "page's DNS rebinding?): open it as http://127.0.0.1:PORT/; behind a proxy that "
                                "sends its own name, start the server with --token (or --no-auth)"}).encode()
    await send({"type": "http.response.start", "status": 421,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

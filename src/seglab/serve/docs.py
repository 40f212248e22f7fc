"""The API documentation at /docs: one HTML page written from the app's OpenAPI schema, with no script.

FastAPI's own /docs page loads Swagger UI from a CDN, so offline it is blank and online it runs
someone else's scripts next to the token; this page is plain HTML from the same schema, served
by the process under the page's policy, and like /openapi.json it needs the token when there is one.
"""
from __future__ import annotations

from html import escape

METHOD_ORDER = ("get", "post", "put", "delete")


def docs_page(schema: dict) -> str:
    """The HTML of /docs: every operation of `schema` (an OpenAPI 3 dict) with its parameters."""
    info = schema.get("info", {})
    sections = [_operation(path, method, operation) for path, item in schema.get("paths", {}).items()
                for method, operation in sorted(item.items(), key=lambda kv: _method_rank(kv[0]))]
    return "\n".join([
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{escape(info.get('title', 'API'))}: API</title>",
        '<link rel="icon" href="data:,">', '<link rel="stylesheet" href="/static/style.css">', "</head>", "<body>",
        (f"<header><h1>{escape(info.get('title', 'API'))} API</h1>"
         f"<span class=\"sub\">version {escape(str(info.get('version', '')))}</span>"
         '<nav><a href="/">predict</a> <a href="/openapi.json">openapi.json</a></nav></header>'),
        f"<p>{escape(info.get('description', ''))}</p>",
        ("<p class=\"sub\">Every refusal is a 4xx (503 when the server is busy or out of memory) with one line of "
         "JSON: <code>{\"error\": \"...\"}</code>.</p>"),
        *sections, "</body>", "</html>"])


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _operation(path: str, method: str, operation: dict) -> str:
    token = " (needs the token: <code>Authorization: Bearer TOKEN</code>)" if operation.get("security") else ""
    parts = [f"<h2><code>{escape(method.upper())} {escape(path)}</code></h2>",
             f"<p>{escape(operation.get('summary', ''))}{token}</p>"]
    parameters = operation.get("parameters", [])
    if parameters:
        rows = "".join(f"<tr><td><code>{escape(p.get('name', ''))}</code></td><td>{escape(p.get('in', ''))}</td>"
                       f"<td>{escape(p.get('description', ''))}</td></tr>" for p in parameters)
        parts.append(f"<table><thead><tr><th>parameter</th><th>in</th><th>meaning</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    body = operation.get("requestBody", {}).get("content", {})
    if body:
        parts.append("<p class=\"sub\">body: " + ", ".join(f"<code>{escape(kind)}</code>" for kind in body) + "</p>")
    return "\n".join(parts)

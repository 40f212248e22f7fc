"""The page at / and the runs page at /runs: files of this package, served by the process (no CDN, no internet)."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from seglab.options import shown
from seglab.serve.options import ServeOptions
from seglab.serve.run_listing import chunks, describe_run, find_runs, open_confined
from seglab.serve.uploads import ApiError

STATIC_FILES = {"index.html": "text/html", "runs.html": "text/html", "common.js": "text/javascript",
                "app.js": "text/javascript",
                "runs.js": "text/javascript", "style.css": "text/css"}
# The pages load nothing from elsewhere; the browser is told so too.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
# report.html is one self-contained file: inline CSS and data-URI images, no scripts.
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def static_file(name: str) -> bytes:
    """A page asset shipped in seglab/serve/static (package data)."""
    return resources.files("seglab.serve").joinpath("static", name).read_bytes()


def add_page_routes(app: FastAPI, options: ServeOptions, guard: list) -> None:
    assets = {name: static_file(name) for name in STATIC_FILES}
    headers = {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-cache"}

    def asset(name: str) -> Response:
        return Response(assets[name], media_type=STATIC_FILES[name], headers=headers)

    @app.get("/", include_in_schema=False)
    async def index():
        return asset("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in assets:
            raise ApiError(404, f"no page asset {shown(name)}")
        return asset(name)

    if options.runs is not None:
        add_runs_routes(app, Path(options.runs), guard, asset)


def add_runs_routes(app: FastAPI, root: Path, guard: list, asset) -> None:
    """/runs and its API: the run folders under `root`, their curves.png and report.html."""

    def run_folder(name: str) -> Path:
        runs = find_runs(root)  # looked up by name, never joined from the request: no path escapes root
        if name not in runs:
            raise ApiError(404, f"no run {shown(name)} under {root.name}/")
        return runs[name]

    def run_file(name: str, file_name: str, missing: str) -> StreamingResponse:
        path = run_folder(name) / file_name
        handle = open_confined(root, path)
        if handle is None and os.path.lexists(path):
            raise ApiError(404, f"run {shown(name)}: {file_name} is not a file inside {root.name}/ (a link out of "
                                "it?); it is not served")
        if handle is None:
            raise ApiError(404, missing)
        media_type = "image/png" if file_name.endswith(".png") else "text/html"
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if media_type == "text/html":
            headers["Content-Security-Policy"] = REPORT_POLICY
        return StreamingResponse(chunks(handle), media_type=media_type, headers=headers)

    def listing() -> dict:
        return {"root": root.resolve().name,
                "runs": [describe_run(root, name, folder) for name, folder in find_runs(root).items()]}

    @app.get("/runs", include_in_schema=False)
    async def runs_page():
        return asset("runs.html")

    @app.get("/v1/runs", dependencies=guard, summary="The run folders under --runs DIR, with their last metrics")
    async def runs_list():
        return JSONResponse(await run_in_threadpool(listing))  # files are read off the event loop

    @app.get("/v1/runs/{name:path}/curves.png", dependencies=guard, summary="A run's curves.png")
    async def run_curves(name: str):
        return await run_in_threadpool(run_file, name, "curves.png", f"run {shown(name)} has no curves.png yet")

    @app.get("/v1/runs/{name:path}/report.html", dependencies=guard, summary="A run's report.html")
    async def run_report(name: str):
        return await run_in_threadpool(run_file, name, "report.html",
                                       f"run {shown(name)} has no report.html yet (seglab report RUN)")

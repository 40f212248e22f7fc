"""The FastAPI app of `seglab serve`: POST /v1/predict, GET /v1/model, /healthz, the page at /, and /runs.

A thin layer over a Predictor (`seglab.load`): requests are checked here, images decoded as
`seglab predict` reads files, predictions batched by `Batcher`, bodies encoded by `encode`. Every
refusal is a 4xx with one line of JSON, `{"error": "..."}`.
"""
from __future__ import annotations

import hmac
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from seglab.data.io import max_pixels
from seglab.errors import ConfigError, DataError, SeglabError
from seglab.inference.prediction import Prediction
from seglab.inference.predictor import Predictor
from seglab.options import shown
from seglab.serve import encode
from seglab.serve.batcher import Batcher, PredictionStopped
from seglab.serve.docs import docs_page
from seglab.serve.host_check import LoopbackHostOnly
from seglab.serve.limits import answer_within, check_work
from seglab.serve.options import PredictQuery, ServeOptions
from seglab.serve.pages import PAGE_POLICY, add_page_routes
from seglab.serve.uploads import ApiError, ClientLeft, decode_upload, parse_query, upload_bytes
from seglab.version import __version__

TOKEN_COOKIE = "seglab_token"  # set by the page, so that <img> and links carry the token too
MAX_VARIANTS = 64              # predictors kept for distinct query options (they share the model)
logger = logging.getLogger("seglab.serve")


@dataclass
class ServerState:
    predictor: Predictor
    options: ServeOptions
    batcher: Batcher | None = None
    started: float = field(default_factory=time.time)
    in_flight: int = 0
    answered: int = 0
    refused: int = 0
    variants: dict = field(default_factory=dict)
    model_left_running: bool = False           # the stop found the model inside a forward pass

    def variant(self, query: PredictQuery) -> tuple[Predictor, tuple]:
        """The predictor for a request's inference options (shared by every request with the same),
        and the key the batcher groups it by."""
        changes = query.inference_changes()
        key = tuple(sorted((name, tuple(value) if isinstance(value, list) else value)
                           for name, value in changes.items()))
        if key not in self.variants:
            if len(self.variants) >= MAX_VARIANTS:
                self.variants.pop(next(iter(self.variants)))
            try:
                self.variants[key] = self.predictor.with_options(**changes) if changes else self.predictor
            except SeglabError as error:
                raise ApiError(400, str(error)) from None
        return self.variants[key], key


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def is_allocation_failure(error: BaseException) -> bool:
    """MemoryError, or PyTorch's "DefaultCPUAllocator: can't allocate memory" / "out of memory"."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text))


OUT_OF_MEMORY = ("the server has not enough memory for this prediction now; it goes on: try again later, or send "
                 "a smaller image or ask for tiles")


def install_error_handlers(app: FastAPI, state: ServerState) -> None:
    """Every failure is one line of JSON: refusals with their 4xx, unknown routes 404/405, and a bug
    a 500 that names no internals (the traceback goes to the server's log). A client that left gets
    one line in the log and no answer."""

    @app.exception_handler(ClientLeft)
    async def client_left(request: Request, error: ClientLeft):
        logger.warning("seglab serve: %s %s: %s", request.method, request.url.path, error)
        return Response(status_code=499)  # nobody reads it: nginx's "client closed request"

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError):
        state.refused += 1
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        state.refused += 1
        if error.status_code == 404:
            return error_response(404, f"no {shown(request.url.path)}: the API is POST /v1/predict, GET /v1/model, "
                                       "GET /healthz (documented at /docs)")
        if error.status_code == 405:
            return error_response(405, f"{request.method[:20]} is not allowed on {shown(request.url.path)}")
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        state.refused += 1
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(422, f"invalid request ({where}: {first.get('msg', 'invalid')})")

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception):
        logger.exception("seglab serve: %s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error ({type(error).__name__}); the server's log has the details")


def token_guard(token: str | None):
    """A dependency that admits requests carrying the token (Authorization: Bearer, or the page's
    cookie); without a token configured it admits every request."""
    bearer = HTTPBearer(auto_error=False, description="the server's --token")

    async def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        if token is None:
            return
        given = credentials.credentials if credentials else unquote(request.cookies.get(TOKEN_COOKIE, ""))
        challenge = {"WWW-Authenticate": "Bearer"}
        if not given:
            raise ApiError(401, "missing token: send the header 'Authorization: Bearer TOKEN' with the server's "
                                "--token", challenge)
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "wrong token: send the server's --token as 'Authorization: Bearer TOKEN'", challenge)

    return check


def model_description(state: ServerState) -> dict:
    """GET /v1/model: classes and colours, input, preprocessing, inference settings, training."""
    predictor, options = state.predictor, state.options
    info = predictor.info
    metrics = {key: value for key, value in (info.get("metrics") or {}).items()
               if isinstance(value, (int, float)) and math.isfinite(value)}  # JSON has no NaN
    return {
        "model": (info.get("model") or {}).get("name"), "model_kwargs": (info.get("model") or {}).get("kwargs"),
        "source": Path(info.get("source", "model")).name, "format": info.get("format"),
        "classes": encode.describe_classes(predictor.class_map), "binary": predictor.class_map.is_binary,
        "multilabel": predictor.class_map.multilabel,
        "ignore_value": predictor.class_map.ignore_value,
        "input": {"channels": predictor.channels, "scale": predictor.scale,
                  "normalization": predictor.normalization},
        "inference": {"threshold": predictor.threshold, "tile": list(predictor.tile) if predictor.tile else None,
                      "overlap": predictor.overlap, "tta": predictor.tta, "device": str(predictor.device),
                      "runtime": predictor.runtime},
        # metrics rows count epochs from 1 (the checkpoint's own "epoch" is the loop's index)
        "training": {"epoch": metrics.get("epoch", info.get("epoch")), "step": info.get("step"), "metrics": metrics,
                     "seglab_version": info.get("seglab_version")},
        "server": {"seglab_version": __version__, "max_batch": state.batcher.max_batch,
                   "max_wait_ms": options.max_wait_ms, "max_upload_bytes": options.max_upload_bytes,
                   "max_pixels": max_pixels(), "max_tiles": options.max_tiles, "min_tile": options.min_tile,
                   "max_queue": options.max_queue, "upload_timeout_s": options.upload_timeout,
                   "request_timeout_s": options.request_timeout, "auth": options.token is not None,
                   "runs": options.runs is not None},
    }


PREDICT_DOC = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary", "description": "the image file"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}},
    "parameters": [{"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
                   for name, text in PredictQuery.help().items()],
}


def render(state: ServerState, query: PredictQuery, image, prediction: Prediction, batch: int) -> Response:
    """The body a request asked for (see PredictQuery.output and format)."""
    headers = {"X-Seglab-Batch": str(batch)}
    if query.format == "json":
        return JSONResponse(encode.mask_json(state.predictor, prediction, batch), headers=headers)
    if query.output == "overlay":
        return Response(encode.overlay_png(image, prediction, query.opacity), media_type=encode.PNG, headers=headers)
    if query.output == "probability":
        body = encode.probability_png(state.predictor, prediction, query.class_index)
        return Response(body, media_type=encode.PNG, headers=headers)
    if query.output == "instances":
        body, media_type = encode.instances_body(prediction)
        return Response(body, media_type=media_type, headers=headers)
    return Response(encode.mask_png(prediction), media_type=encode.PNG, headers=headers)


async def predict_request(state: ServerState, request: Request) -> Response:
    """One POST /v1/predict: query, body, decode, batch, encode; each step refuses with its 4xx."""
    query = parse_query(request)
    classes = state.predictor.class_map
    if query.class_index is not None and query.class_index >= classes.num_classes:
        raise ApiError(400, f"invalid query.class_index: {query.class_index}; the model has {classes.num_classes} "
                            f"classes ({classes.describe()})")
    predictor, key = state.variant(query)
    data, name = await upload_bytes(request, state.options.max_upload_bytes, state.options.upload_timeout)
    image = await decode_upload(data, name)
    check_work(state.options, predictor, query, image.shape)
    prediction = state.batcher.predict(predictor, key, image, name, instances=query.output == "instances")
    try:
        prediction, batch = await answer_within(request, prediction, state.options.request_timeout)
    except DataError as error:  # the image does not fit the model (channels)
        raise ApiError(422, str(error)) from None
    except ConfigError as error:
        raise ApiError(400, str(error)) from None
    except (SeglabError, PredictionStopped) as error:  # out of memory on the device; the server stops
        raise ApiError(503, str(error)) from None
    return await run_in_threadpool(render, state, query, image, prediction, batch)


def create_app(predictor: Predictor, options: ServeOptions | None = None) -> FastAPI:
    """The app serving `predictor` (a Predictor from seglab.load) with `options` (ServeOptions)."""
    options = options or ServeOptions()
    state = ServerState(predictor, options)
    bf16 = predictor.amp_dtype == torch.bfloat16
    state.batcher = Batcher(options.batch_limit(predictor.device.type, bf16), options.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        yield
        state.model_left_running = not await state.batcher.stop()

    # /docs and /openapi.json are this app's own routes (below): behind the token, no CDN.
    app = FastAPI(title="seglab serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="A seglab model behind HTTP: POST an image to /v1/predict, get its mask back. "
                              "The page at / does the same in a browser.")
    app.state.seglab = state
    if options.token is None and not options.no_auth:
        app.add_middleware(LoopbackHostOnly)
    install_error_handlers(app, state)
    guard = [Depends(token_guard(options.token))]

    @app.post("/v1/predict", dependencies=guard, openapi_extra=PREDICT_DOC, response_class=Response,
              summary="Predict the mask of one image (raw bytes or a multipart 'file')")
    async def predict(request: Request):
        if state.in_flight >= options.max_queue:  # before the body is read: uploads cannot pile up in memory
            raise ApiError(503, f"the server is busy: {state.in_flight} predictions in progress (seglab serve "
                                "--max-queue); try again in a moment", {"Retry-After": "1"})
        state.in_flight += 1
        try:
            response = await predict_request(state, request)
        except (MemoryError, RuntimeError) as error:  # decoding, predicting or encoding ran out of memory
            if not is_allocation_failure(error):
                raise
            logger.warning("seglab serve: out of memory answering a prediction (%s)", one_line(error)[:200])
            raise ApiError(503, OUT_OF_MEMORY) from None
        finally:
            state.in_flight -= 1
        state.answered += 1
        return response

    _add_description_routes(app, state, guard)
    add_page_routes(app, options, guard)
    return app


def _add_description_routes(app: FastAPI, state: ServerState, guard: list) -> None:
    """/v1/model, /healthz, and the API's own /openapi.json and /docs (behind the token, no CDN)."""

    @app.get("/v1/model", dependencies=guard, summary="The model: classes, colours, input, training")
    async def model():
        return model_description(state)

    @app.get("/healthz", summary="Liveness and the batching counters")
    async def healthz():
        return {"status": "ok", "uptime_s": round(time.time() - state.started, 3), "in_flight": state.in_flight,
                "answered": state.answered, "refused": state.refused, "batching": state.batcher.counters.to_dict()}

    @app.get("/openapi.json", dependencies=guard, include_in_schema=False)
    async def openapi():
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=guard, include_in_schema=False)
    async def docs():
        return HTMLResponse(docs_page(app.openapi()), headers={"Content-Security-Policy": PAGE_POLICY})

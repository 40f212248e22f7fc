"""One /v1/predict request read safely: its query checked against the declared options, its body
bounded in bytes (raw image bytes or a multipart file), its image decoded as `seglab predict` reads files."""
from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from seglab.data.io import decode_image
from seglab.errors import ConfigError, DataError, ImageTooLargeError, NotAnImageError, ResourceError
from seglab.options import refuse_unknown
from seglab.serve.options import PredictQuery

LIST_FIELDS = ("tile",)  # query values given as "H,W" (or "HxW")
MAX_NAME = 100  # characters of an upload's file name that messages repeat


class ApiError(Exception):
    """A request the server refuses: an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ClientLeft(Exception):
    """The client disconnected before its answer: nobody to answer, one line in the log."""


def parse_query(request: Request) -> PredictQuery:
    """The request's query string as a checked PredictQuery; unknown, repeated or bad values are a 400."""
    params = request.query_params
    known = [f.name for f in dataclasses.fields(PredictQuery)]
    try:
        refuse_unknown(params.keys(), known, "the query of /v1/predict")
        values = {}
        for name in params.keys():
            given = params.getlist(name)
            if len(given) > 1:
                raise ConfigError(f"query parameter {name!r} is given {len(given)} times; give it once")
            text = given[0].strip()
            values[name] = [part for part in text.replace("x", ",").split(",") if part] if name in LIST_FIELDS \
                else text
        return PredictQuery(**values)
    except ConfigError as error:
        raise ApiError(400, str(error)) from None


async def read_body(request: Request, limit: int, seconds: float = 30.0) -> bytes:
    """The request body, refused with a 413 as soon as it passes `limit` bytes (before it is all read,
    whatever Content-Length claims), and with a 408 when it takes more than `seconds` to arrive."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, too_large(int(declared), limit))
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, too_large(size, limit, at_least=True))
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientLeft(f"the client left during its upload (after {size} bytes)") from None
    except TimeoutError:
        raise ApiError(408, f"the upload took longer than this server's {seconds:g} s (seglab serve "
                            "--upload-timeout) and was dropped: send the image faster or smaller") from None
    return b"".join(chunks)


def too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (f"the upload is {'over ' if at_least else ''}{size / 1e6:.1f} MB, over the server's limit of "
            f"{limit / 1e6:g} MB (seglab serve --max-upload-mb)")


async def upload_bytes(request: Request, limit: int, seconds: float = 30.0) -> tuple[bytes, str]:
    """(the image file's bytes, its name for messages) from a raw body or a multipart form's one file,
    which must arrive within `seconds`."""
    body = await read_body(request, limit, seconds)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        if not body:
            raise ApiError(400, "empty request body: send the image file's bytes, or a multipart form with "
                                "a 'file' field")
        return body, "upload"
    form_request = Request(request.scope, receive=_replay(body))
    try:
        form = await form_request.form(max_files=1, max_fields=16)
    except Exception as error:  # noqa: BLE001 - Starlette reports every malformed form its own way
        raise ApiError(400, f"cannot read the multipart form ({_first_line(error)}): send one image as the "
                            "'file' field") from None
    files = [value for _, value in form.multi_items() if hasattr(value, "read")]
    if not files:
        raise ApiError(400, "the multipart form holds no file: send the image as the 'file' field")
    upload = files[0]
    data = await upload.read()
    await form.close()
    return data, (upload.filename or "upload")[:MAX_NAME]


def _replay(body: bytes):
    """An ASGI receive that hands the body already read to a second parser (the form's)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def decode_upload(data: bytes, name: str) -> np.ndarray:
    """The upload's pixels (H, W, C), decoded off the event loop; refusals mapped to HTTP statuses:
    413 for pixel counts over the limit, 415 for bytes that are no image, 400 for broken ones."""
    try:
        return await run_in_threadpool(decode_image, data, name)
    except ImageTooLargeError as error:
        raise ApiError(413, str(error).replace("pass --max-pixels", "start the server with --max-pixels")) from None
    except ResourceError:
        raise ApiError(503, f"the server has not enough memory to decode '{name}' now; it goes on: try again later, "
                            "or send a smaller image") from None
    except NotAnImageError as error:
        raise ApiError(415, _for_uploads(error)) from None
    except DataError as error:
        raise ApiError(400, _for_uploads(error)) from None


def _for_uploads(error: DataError) -> str:
    """The reader's advice for files on disk, said for an upload."""
    return (str(error).replace("re-export or remove it", "send the image file itself (PNG, JPEG, TIFF, ...)")
            .replace("split it into single images or use `read_stack`", "send one image"))


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:160] or type(error).__name__

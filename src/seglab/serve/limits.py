"""How much one /v1/predict request may ask of the model, and how long it may hold it.

Before a prediction is queued: the request's tile is at least --min-tile, its image at its scale
within --max-pixels, and its tile grid at most --max-tiles tiles. While it waits and runs: at most
--request-timeout seconds, and not a moment longer than its client stays connected; a prediction
nobody waits for stops at its next batch of tiles (serve.batcher).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from starlette.requests import Request

from seglab.data.io import max_pixels
from seglab.data.preprocess import scaled_size
from seglab.inference.predictor import Predictor
from seglab.inference.tiling import tile_grid
from seglab.serve.options import PredictQuery, ServeOptions
from seglab.serve.uploads import ApiError, ClientLeft

DISCONNECT_POLL_S = 0.25  # how often a waiting request looks whether its client is still there


def check_work(options: ServeOptions, predictor: Predictor, query: PredictQuery, image_shape: tuple) -> None:
    """ApiError (400, 413) for a request whose tiles are smaller than the server allows, whose scale
    makes its image larger than the pixel limit, or whose tile grid holds more than --max-tiles."""
    if query.tile and min(query.tile) < options.min_tile:
        raise ApiError(400, f"invalid query.tile: {','.join(map(str, query.tile))}; this server's smallest tile "
                            f"is {options.min_tile} px (seglab serve --min-tile)")
    height, width = image_shape[:2]
    scale = predictor.scale  # the request's, or the server's
    scaled = scaled_size(height, width, scale)
    if scaled[0] * scaled[1] > max_pixels():
        raise ApiError(413, f"scale {scale:g} makes the {width}x{height} image {scaled[1]}x{scaled[0]} pixels, over "
                            f"the limit of {max_pixels() / 1e6:.0f} megapixels: ask for a smaller scale")
    if not predictor.tile:
        return
    margin = getattr(predictor.model, "margin", 0)
    try:
        grid = tile_grid(*scaled, predictor.tile, predictor.overlap, margin,
                          predictor.model.valid_input_size if margin else None)
    except ValueError as error:
        raise ApiError(400, f"invalid query.tile for this model: {error}") from None
    tiles = len(grid.ys) * len(grid.xs)
    if tiles > options.max_tiles:
        raise ApiError(400, f"tile {predictor.tile[0]}x{predictor.tile[1]} with overlap {predictor.overlap:g} "
                            f"covers this {scaled[1]}x{scaled[0]} image with {tiles} tiles, over this server's "
                            f"limit of {options.max_tiles} per request (seglab serve --max-tiles): ask for larger "
                            "tiles or less overlap")


async def answer_within(request: Request, prediction: Awaitable, seconds: float):
    """The result of `prediction`, awaited at most `seconds` and only while the client is connected.
    Otherwise the prediction is cancelled (so the model drops it) and ApiError 503, or ClientLeft
    when nobody is there to answer, is raised."""
    task = asyncio.ensure_future(prediction)
    watcher = asyncio.ensure_future(_client_left(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server's shutdown timeout ran out: the one reason this is cancelled
        asyncio.current_task().uncancel()
        raise ApiError(503, "the server is stopping: send the request again once it is back") from None
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    if watcher in done:
        raise ClientLeft("the client left while its prediction ran; it was stopped")
    raise ApiError(503, f"the prediction took longer than this server's {seconds:g} s (seglab serve "
                        "--request-timeout) and was stopped: ask for fewer tiles or less TTA, or send a smaller "
                        "image")


async def _client_left(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)

"""Concurrent requests for images of one size, grouped into one Predictor.predict_batch call on a worker thread.

Requests wait in one list. A collector task takes the oldest request and lets it wait up to
`max_wait_ms` (from its arrival) for others with the same key (image shape and dtype, the
request's inference options, scale and instances), up to `max_batch`; then the group goes through
the network in one forward pass on the model's thread while the event loop keeps answering.
Requests that arrive while a batch runs wait for it and leave together in the next one, so under
load batches form without waiting at all. Tiled requests (the `tile` option) go alone, at once.
"""
from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from seglab.inference.predictor import Prediction, Predictor


ALONE = object()  # the key of a request that shares its forward passes with no other


@dataclass
class BatchCounters:
    """What the batcher did: read by /healthz, and by tests to prove that batching happened."""

    requests: int = 0                # predictions asked for
    batches: int = 0                 # predict_batch calls (forward passes of whole images)
    largest: int = 0                 # most requests in one call
    sizes: Counter = field(default_factory=Counter)  # requests per call -> how many calls

    def record(self, size: int) -> None:
        self.batches += 1
        self.largest = max(self.largest, size)
        self.sizes[size] += 1

    def to_dict(self) -> dict:
        return {"requests": self.requests, "batches": self.batches, "largest": self.largest,
                "sizes": {str(size): count for size, count in sorted(self.sizes.items())}}


@dataclass
class _Job:
    key: tuple
    predictor: Predictor
    image: np.ndarray               # (H, W, C) decoded upload
    name: str
    scale: float | None
    instances: bool
    arrived: float
    future: asyncio.Future


class Batcher:
    """await batcher.predict(predictor, options_key, image, name) -> (Prediction, batch size).

    `options_key` must be equal for requests whose predictor options are equal (they share the
    first one's predictor). The model runs on one worker thread, one batch at a time.
    """

    def __init__(self, max_batch: int = 8, max_wait_ms: float = 5.0):
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.counters = BatchCounters()
        self._waiting: list[_Job] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seglab-model")
        self._serial = itertools.count()

    def start(self) -> None:
        """Start collecting (inside the server's event loop)."""
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Stop collecting; requests still waiting get an error. The server calls this after the
        requests in flight have been answered."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._waiting:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is stopping"))
        self._waiting.clear()
        self._worker.shutdown(wait=True)

    async def predict(self, predictor: Predictor, options_key: tuple, image: np.ndarray, name: str,
                      scale: float | None = None, instances: bool = False) -> tuple[Prediction, int]:
        """The Prediction of one decoded image (H, W, C), and how many requests shared its call."""
        loop = asyncio.get_running_loop()
        key = (options_key, image.shape, image.dtype.str, scale, instances)
        if predictor.tile:  # tiled images go through the network tile by tile: nothing to share, no wait
            key = (ALONE, next(self._serial))
        job = _Job(key, predictor, image, name, scale, instances, loop.time(), loop.create_future())
        self.counters.requests += 1
        self._waiting.append(job)
        self._arrived.set()
        return await job.future

    def _same_key(self, key: tuple) -> list[_Job]:
        return [job for job in self._waiting if job.key == key and not job.future.done()]

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._waiting = [job for job in self._waiting if not job.future.done()]  # drop abandoned requests
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._waiting[0]
            deadline = first.arrived + (0 if first.key[0] is ALONE else self.max_wait)
            while len(self._same_key(first.key)) < self.max_batch and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            batch = self._same_key(first.key)[:self.max_batch]
            if not batch:
                continue  # the first request was abandoned while it waited
            taken = set(map(id, batch))
            self._waiting = [job for job in self._waiting if id(job) not in taken]
            await self._run(batch)

    async def _run(self, batch: list[_Job]) -> None:
        """One predict_batch call on the worker thread; each request gets its Prediction or error."""
        head = batch[0]
        self.counters.record(len(batch))
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._worker, head.predictor.predict_batch, [job.image for job in batch],
                [job.name for job in batch], head.scale, head.instances)
        except asyncio.CancelledError:  # the server stops: no request is left hanging
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the server is stopping"))
            raise
        except Exception as error:  # noqa: BLE001 - every request of the batch hears of it
            results = [error] * len(batch)
        for job, result in zip(batch, results):
            if job.future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result((result, len(batch)))

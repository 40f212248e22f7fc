"""Concurrent requests for images of one size, grouped into one Predictor.predict_batch call on a worker thread.

Requests wait in one list. A collector task takes the oldest request and lets it wait up to
`max_wait_ms` (from its arrival) for others with the same key (image shape and dtype, the
request's inference options (scale among them) and instances), up to `max_batch`; then the group goes through
the network in one forward pass on the model's thread while the event loop keeps answering.
Requests that arrive while a batch runs wait for it and leave together in the next one, so under
load batches form without waiting at all. Tiled requests (the `tile` option) go alone, at once.

A request whose caller stops waiting (its client left, its deadline passed: the awaiting task is
cancelled) is dropped from the queue, and a tiled prediction of it stops at its next batch of
tiles. The model's thread is a daemon, so a stop never waits on a forward pass that will not end.
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from seglab.inference.prediction import Prediction
from seglab.inference.predictor import Predictor
from seglab.inference.tiling import interruptible

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


class PredictionStopped(Exception):
    """A prediction stopped between tiles: nobody waits for it any more, or the server is stopping."""


class ModelThread:
    """The one thread that runs the model: calls run one at a time, in order. A daemon thread, so
    the process can end while a long forward pass is still running (Python joins executor threads
    at exit, which made SIGTERM wait for minutes)."""

    def __init__(self):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="seglab-model", daemon=True)
        self._thread.start()

    def submit(self, function, *args) -> Future:
        future: Future = Future()
        self._calls.put((future, function, args))
        return future

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, function, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)

    @property
    def busy(self) -> bool:
        return self._thread.is_alive()

    async def stop(self, timeout: float) -> bool:
        """Let the thread end after its current call; True if it did within `timeout` seconds."""
        self._calls.put(None)
        deadline = asyncio.get_running_loop().time() + timeout
        while self._thread.is_alive() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return not self._thread.is_alive()


@dataclass
class _Job:
    key: tuple
    predictor: Predictor
    image: np.ndarray               # (H, W, C) decoded upload
    name: str
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
        self._model: ModelThread | None = None
        self._stopping = False
        self._serial = itertools.count()

    def start(self) -> None:
        """Start collecting (inside the server's event loop) and the model's thread."""
        self._arrived = asyncio.Event()
        self._model = ModelThread()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    @property
    def model_busy(self) -> bool:
        """Whether the model's thread still runs (after stop(): inside a forward pass)."""
        return self._model is not None and self._model.busy

    async def stop(self, timeout: float = 2.0) -> bool:
        """Stop collecting; requests still waiting get an error, a tiled prediction running stops at
        its next batch of tiles. Waits at most `timeout` seconds for the model's thread; False if it
        was still in a forward pass (the process may end anyway: the thread is a daemon). The
        server calls this after the requests in flight were answered or cancelled."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._waiting:
            if not job.future.done():
                job.future.set_exception(PredictionStopped("the server is stopping"))
        self._waiting.clear()
        return await self._model.stop(timeout) if self._model is not None else True

    async def predict(self, predictor: Predictor, options_key: tuple, image: np.ndarray, name: str,
                      instances: bool = False) -> tuple[Prediction, int]:
        """The Prediction of one decoded image (H, W, C), and how many requests shared its call."""
        loop = asyncio.get_running_loop()
        key = (options_key, image.shape, image.dtype.str, instances)
        if predictor.tile:  # tiled images go through the network tile by tile: nothing to share, no wait
            key = (ALONE, next(self._serial))
        job = _Job(key, predictor, image, name, instances, loop.time(), loop.create_future())
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

    def _predict_on_model_thread(self, batch: list[_Job]) -> list:
        """predict_batch of the batch, stopped between tiles when no request waits for it any more."""
        def check() -> None:
            if self._stopping:
                raise PredictionStopped("the server is stopping")
            if all(job.future.done() for job in batch):
                raise PredictionStopped("nobody waits for this prediction any more")

        check()
        head = batch[0]
        with interruptible(check):
            return head.predictor.predict_batch([job.image for job in batch], [job.name for job in batch],
                                                head.instances)

    async def _run(self, batch: list[_Job]) -> None:
        """One predict_batch call on the model's thread; each request gets its Prediction or error."""
        self.counters.record(len(batch))
        try:
            results = await asyncio.wrap_future(self._model.submit(self._predict_on_model_thread, batch))
        except asyncio.CancelledError:  # the server stops: no request is left hanging
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(PredictionStopped("the server is stopping"))
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

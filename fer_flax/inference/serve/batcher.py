"""Micro-batching: the images of concurrent requests go to the model together.

A request hands its decoded images to `Batcher.submit` and awaits their faces. One worker thread
takes the first waiting request, then keeps collecting for at most `max_wait_s` (or until
`max_batch` images are in hand) and runs one `predict` call on all of them, so that requests that
arrive together share the device's batches, and the model's compiled shapes, instead of queueing
one call each. The worker is the only caller of `predict`: the model needs no lock, and the event
loop stays free to read uploads and answer while the device works.

The queue is bounded in images (`max_pending`): beyond it `submit` raises `Busy` at once, so a flood
of requests costs a refusal each, not memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


class Busy(RuntimeError):
    """More images are waiting for the model than the queue holds."""


@dataclasses.dataclass
class _Job:
    images: Sequence[Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclasses.dataclass
class Stats:
    """What the batcher has done: model calls, images, requests and the largest batch (in images)."""

    batches: int = 0
    images: int = 0
    requests: int = 0
    largest_batch: int = 0


def _reply(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    """Hands a job's outcome to its request on the request's event loop (a loop that has closed, the
    server stopping, is left alone)."""
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_resolve, job.future, result, error)


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the request was abandoned (its client went away)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class Batcher:
    """Runs `predict(images) -> one result per image` on the images of concurrent `submit` calls.

    max_batch: the most images per call (a single request with more runs alone, whole).
    max_wait_s: how long the worker waits for more requests after the first one of a batch.
    max_pending: the most images waiting; more are refused with `Busy`.
    """

    def __init__(
        self,
        predict: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        max_pending: int = 256,
    ):
        if max_batch < 1 or max_pending < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_pending must be at least 1, max_wait_s at least 0")
        self._predict = predict
        self.max_batch, self.max_wait_s, self.max_pending = max_batch, max_wait_s, max_pending
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self.stats = Stats()
        self._thread = threading.Thread(target=self._work, name="fer_flax-batcher", daemon=True)
        self._thread.start()

    async def submit(self, images: Sequence[Any]) -> list[Any]:
        """The results of `images`, in order, once a batch holding them has run."""
        with self._lock:
            if self._pending + len(images) > self.max_pending:
                raise Busy(f"{self._pending} images are waiting for the model; try again shortly")
            self._pending += len(images)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(list(images), future, loop))
        return await future

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the worker after the batches already queued."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and the jobs that arrive within `max_wait_s`, up to `max_batch` images; and
        whether the stop signal came meanwhile."""
        jobs, count = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.images)
        return jobs, False

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            images = [image for job in jobs for image in job.images]
            with self._lock:
                self._pending -= len(images)
            try:
                results = list(self._predict(images))
            except Exception as e:  # every request of the batch hears of it; the worker goes on
                for job in jobs:
                    _reply(job, None, e)
                continue
            stats = self.stats
            stats.batches, stats.images, stats.requests = (
                stats.batches + 1, stats.images + len(images), stats.requests + len(jobs)
            )  # fmt: skip
            stats.largest_batch = max(stats.largest_batch, len(images))
            start = 0
            for job in jobs:
                part = results[start : start + len(job.images)]
                start += len(job.images)
                _reply(job, part)

"""Micro-batching: concurrent requests coalesce into one model call.

A model of ~100k parameters answers 64 images in one call in about the time it answers one,
so the server waits at most `max_wait_s` for company before calling the model with up to
`max_batch` images. Admission is bounded: a request that finds `max_queue` images already
waiting, or that waits longer than `deadline_s` before its batch starts, is refused
(`Overloaded`: the server answers 503 with Retry-After) instead of queueing for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full or a request waited past the deadline: retry later (HTTP 503)."""


@dataclass(frozen=True)
class BatchOptions:
    max_batch: int = 32        # images per model call (32 cost 5.4 ms, one 1.4 ms)
    max_wait_s: float = 0.002  # how long the first request waits for others
    max_queue: int = 512       # images waiting; more are refused at once
    deadline_s: float = 0.5    # a request not started within this is refused


@dataclass
class _Item:
    images: np.ndarray                     # (n, 28, 28) uint8
    future: asyncio.Future[np.ndarray]
    since: float


class Batcher:
    """Runs `predict` ((n, 28, 28) uint8 -> (n, 10) probabilities) on one thread (Keras
    models are not thread-safe), on batches of queued requests."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], opts: BatchOptions,
                 on_batch: Callable[[int], None] = lambda n: None) -> None:
        self.predict, self.opts, self.on_batch = predict, opts, on_batch
        self.pending: list[_Item] = []
        self.queued = 0                                   # images in `pending`
        self.wakeup = asyncio.Event()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """The probabilities for `images`, computed in a batch with whatever else waits."""
        if self.queued + len(images) > self.opts.max_queue and self.queued:
            raise Overloaded(f"{self.queued} images already waiting")
        item = _Item(images, asyncio.get_running_loop().create_future(), time.monotonic())
        self.pending.append(item)
        self.queued += len(images)
        self.wakeup.set()
        return await item.future

    def _take(self) -> list[_Item]:
        """Up to max_batch images' worth of requests (at least one request); the ones that
        waited past the deadline are refused."""
        now, batch, n = time.monotonic(), [], 0
        while self.pending:
            item = self.pending[0]
            if now - item.since > self.opts.deadline_s:
                self.pending.pop(0)
                self.queued -= len(item.images)
                if not item.future.done():
                    item.future.set_exception(Overloaded("waited past the deadline"))
                continue
            if batch and n + len(item.images) > self.opts.max_batch:
                break
            self.pending.pop(0)
            self.queued -= len(item.images)
            batch.append(item)
            n += len(item.images)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self.queued < self.opts.max_batch and self.opts.max_wait_s > 0:
                await asyncio.sleep(self.opts.max_wait_s)    # let others join
            batch = self._take()
            if not batch:
                continue
            x = np.concatenate([it.images for it in batch])
            try:
                proba = await loop.run_in_executor(self.model_thread, self.predict, x)
            except Exception as exc:  # the model failed: every request in it hears why
                log.exception("model call on %d images failed", len(x))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            self.on_batch(len(x))
            start = 0
            for it in batch:
                if not it.future.done():              # a client gone: its future cancelled
                    it.future.set_result(proba[start:start + len(it.images)])
                start += len(it.images)

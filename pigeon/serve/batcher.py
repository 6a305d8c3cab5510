"""Micro-batching: requests that arrive together run as one forward pass.

Each request puts its decoded images on an asyncio queue. One consumer takes the first waiting request, then
keeps taking requests until it holds max_batch images or max_wait_ms has passed since the first, and runs the
model on all of them in a worker thread, so the event loop never waits on model code. While that pass runs,
new requests queue up, which is what fills the next batch under load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import numpy as np

from pigeon.serve.errors import ApiError


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait_ms: float,
                 queue_limit: int, on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None, in_flight: Callable[[], int] | None = None) -> None:
        self._run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        # Requests the server is handling now: when every one of them is already in the batch, nothing else can
        # join it, so a lone request (concurrency 1) runs at once instead of waiting max_wait_ms for company.
        self._in_flight = in_flight
        self.queue_limit, self._on_batch, self._on_depth = queue_limit, on_batch, on_depth
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pigeon-model")
        self.depth = 0  # images waiting for the model

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, C, H, W] -> probabilities [N, K], batched with whatever else is waiting."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._consume())
        if self.depth + len(images) > self.queue_limit:
            raise ApiError(503, "busy", f"{self.depth} images are waiting for the model (the limit is "
                           f"{self.queue_limit}); retry in a moment", headers={"Retry-After": "1"})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._set_depth(self.depth + len(images))
        await self._queue.put((images, future))
        return await future

    def _set_depth(self, depth: int) -> None:
        self.depth = depth
        if self._on_depth:
            self._on_depth(depth)

    async def _consume(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            count = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
                if self._in_flight is not None and self._queue.empty() and self._in_flight() <= len(batch):
                    break
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                count += len(item[0])
            self._set_depth(self.depth - count)
            if self._on_batch:
                self._on_batch(count)
            try:
                probs = await loop.run_in_executor(self._pool, self._run, np.concatenate([b[0] for b in batch]))
            except Exception as err:  # noqa: BLE001 - the waiting requests get the error, the loop lives on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            start = 0
            for images, future in batch:
                if not future.done():
                    future.set_result(probs[start:start + len(images)])
                start += len(images)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

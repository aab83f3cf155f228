"""Server-side batching: requests that wait while the model runs go through it together.

The first waiting request opens a short collection window (``batch_wait_ms``, only under
load), every request that arrives in it (up to ``max_batch_size`` texts) joins the same
forward pass, run in a single worker thread so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .settings import ServeSettings


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Collects queued requests into forward passes run in a single worker thread."""

    def __init__(self, predict_proba: Callable[[list[str]], np.ndarray], settings: ServeSettings) -> None:
        self.predict_proba = predict_proba
        self.settings = settings
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptclf-model")
        self._carry: _Job | None = None
        self._last_jobs = 0        # requests in the previous batch: the load signal for the window
        self._task: asyncio.Task | None = None
        self.batches = 0          # forward passes so far (for /healthz and tests)
        self.texts_done = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, texts: list[str]) -> asyncio.Future:
        """Queue texts; raises ``asyncio.QueueFull`` when the queue is at its bound."""
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return job.future

    async def _next_batch(self) -> list[_Job]:
        s = self.settings
        first = self._carry or await self.queue.get()
        self._carry = None
        jobs, n = [first], len(first.texts)
        if not s.batching:
            return jobs
        if self.queue.empty() and s.batch_wait_ms > 0 and self._last_jobs > 1:
            # Nobody else waiting yet, but the last batch was shared: under load, hold the
            # window open briefly for concurrent requests. A lone client (last batch of one)
            # never pays the window; under load requests pile up while the model runs anyway.
            await asyncio.sleep(s.batch_wait_ms / 1000)
        while n < s.max_batch_size and not self.queue.empty():
            job = self.queue.get_nowait()
            if n + len(job.texts) > s.max_batch_size:
                self._carry = job  # would overflow the batch: it opens the next one
                break
            jobs.append(job)
            n += len(job.texts)
        self._last_jobs = len(jobs)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [j for j in await self._next_batch() if not j.future.done()]  # drop timed-out ones
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            try:
                probs = await loop.run_in_executor(self.executor, self.predict_proba, texts)
            except Exception as e:  # handed to each request; the 500 handler hides the details
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.batches += 1
            self.texts_done += len(texts)
            i = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(probs[i: i + len(j.texts)])
                i += len(j.texts)



"""Server-side batching: requests that wait while the model runs go through it together.

The first waiting request opens a short collection window (``batch_wait_ms``, only under
load: when fewer requests wait than shared the previous batch), every request that
arrives in it (up to ``max_batch_size`` texts) joins the same forward pass, run in a single
worker thread so the event loop keeps answering.

One bad text never fails anyone else's request. When a forward pass fails, the
requests in it are answered one by one: a text the model cannot take (the classifier
raises :class:`~gptclf.errors.TextError` naming it) fails its own request only, with a
422 that names the text's index in that request; every other request of the batch is
run again without it and answered normally. Any other failure is isolated the same
way, request by request (a request that fails on its own gets a 500). The batching
task survives any exception (a tokenizer's Rust panic is a ``BaseException``) and is
restarted if it ever ends; :meth:`Batcher.health` says "stalled" when a forward pass has
run longer than the request timeout, so ``/healthz`` can tell an orchestrator to restart.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ...errors import TextError
from .settings import ServeSettings


class TextRejected(Exception):
    """One request's text that the model cannot take: answered 422 naming ``index``."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"texts[{index}]: {reason}")
        self.index, self.reason = index, reason


@dataclass
class _Job:
    texts: list[Any]  # what the model function takes, one per text: a text, or (text, model names)
    future: asyncio.Future


class Batcher:
    """Collects queued requests into forward passes run in a single worker thread.

    ``predict_proba`` takes every queued item of a pass and returns one answer per item (rows of an
    array, or a list); a request's answer is its slice. ``on_batch(items, seconds)``, if set, hears
    of every forward pass that succeeded (the server's metrics)."""

    def __init__(self, predict_proba: Callable[[list[Any]], Sequence[Any]], settings: ServeSettings) -> None:
        self.predict_proba = predict_proba
        self.on_batch: Callable[[int, float], None] | None = None
        self.settings = settings
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptclf-model")
        self._carry: _Job | None = None
        self._last_jobs = 0        # requests in the previous batch: the load signal for the window
        self._task: asyncio.Task | None = None
        self.batches = 0          # forward passes so far (for /healthz and tests)
        self.texts_done = 0
        self.failures = 0         # forward passes that raised
        self.restarts = 0         # times the batching task died and was started again
        self._busy_since: float | None = None  # monotonic start of the running forward pass
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._restart)

    def _restart(self, task: asyncio.Task) -> None:
        # _run catches everything, so this is the last line of defence: never leave the
        # queue without a consumer (every later request would wait for its 504).
        if self._stopping or task.cancelled():
            return
        task.exception()  # retrieved: asyncio would log it as never retrieved
        self.restarts += 1
        self._busy_since = None
        self.start()

    def health(self) -> str:
        """"ok", "stalled" (one forward pass has run longer than a request may wait) or "stopped"."""
        if self._task is None or self._task.done():
            return "stopped"
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self.settings.timeout_s:
            return "stalled"
        return "ok"

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, texts: list[Any]) -> asyncio.Future:
        """Queue one request's items; raises ``asyncio.QueueFull`` when the queue is at its bound."""
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
        if s.batch_wait_ms > 0 and 1 + self.queue.qsize() < self._last_jobs and n < s.max_batch_size:
            # Fewer requests waiting than shared the last batch: under load, the clients just
            # answered are sending their next requests, so hold the window open briefly for
            # them. Without it, one request that arrived during the last forward pass would go
            # alone (a whole forward pass for one text) while the others queue behind it, and
            # the batches would alternate big, one, big, one. A lone client (last batch of one)
            # never pays the window.
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
        while True:
            jobs = [j for j in await self._next_batch() if not j.future.done()]  # drop timed-out ones
            if jobs:
                await self._answer(jobs)

    async def _forward(self, texts: list[Any]) -> Sequence[Any]:
        """One forward pass in the worker thread (the model function checks its scores are finite:
        :meth:`gptclf.inference.group.ModelGroup.run` raises a TextError naming a NaN row)."""
        loop = asyncio.get_running_loop()
        self._busy_since = t0 = time.monotonic()
        try:
            probs = await loop.run_in_executor(self.executor, self.predict_proba, texts)
        finally:
            self._busy_since = None
        if self.on_batch is not None:
            self.on_batch(len(texts), time.monotonic() - t0)
        return probs

    async def _answer(self, jobs: list[_Job]) -> None:
        """Run ``jobs`` in one forward pass; on failure, answer the culprits alone and
        the others without them."""
        texts = [t for j in jobs for t in j.texts]
        try:
            probs = await self._forward(texts)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - see the module doc
            # Even SystemExit or KeyboardInterrupt here came from the model's thread, not
            # from the user: the server's own Ctrl-C arrives as this task's cancellation.
            self.failures += 1
            await self._isolate(jobs, e)
            return
        self.batches += 1
        self.texts_done += len(texts)
        i = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result(probs[i: i + len(j.texts)])
            i += len(j.texts)

    async def _isolate(self, jobs: list[_Job], error: BaseException) -> None:
        if isinstance(error, TextError):
            rest, start = [], 0
            for j in jobs:
                bad = [i - start for i in error.reasons if start <= i < start + len(j.texts)]
                if bad:
                    _fail(j, TextRejected(bad[0], error.reasons[start + bad[0]]))
                else:
                    rest.append(j)
                start += len(j.texts)
            if rest and len(rest) < len(jobs):
                await self._answer(rest)
                return
            if not rest:
                return
        if len(jobs) == 1:
            # Alone and still failing: an error of the server, not of another request.
            # A plain Exception, so the 500 handler answers it (a BaseException would not be).
            _fail(jobs[0], error if isinstance(error, Exception) else RuntimeError(type(error).__name__))
            return
        for j in jobs:
            if not j.future.done():
                await self._answer([j])


def _fail(job: _Job, error: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(error)

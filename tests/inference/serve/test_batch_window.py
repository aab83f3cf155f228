"""The batch window under closed-loop load: the clients answered by one forward pass join
the next one, instead of a request that arrived during the pass going through the model
alone or with a few others (batches alternating big, small, big, small)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from gptclf.inference.serve.batcher import Batcher
from gptclf.inference.serve.settings import ServeSettings

MODEL_S = 0.03  # one forward pass


def _model(sizes: list[int]):
    def predict_proba(texts: list[str]) -> np.ndarray:
        sizes.append(len(texts))
        time.sleep(MODEL_S)
        return np.tile([[0.25, 0.75]], (len(texts), 1))
    return predict_proba


async def _closed_loop(batcher: Batcher, fast: int, rounds: int) -> None:
    """``fast`` clients resend 1 ms after their answer; two slow clients resend half a forward
    pass later, so their requests are waiting in the queue when the next pass ends."""
    async def client(delay: float, rounds: int) -> None:
        for _ in range(rounds):
            probs = await batcher.submit(["text"])
            assert probs.shape == (1, 2)
            await asyncio.sleep(delay)

    batcher.start()
    try:
        # The slow clients stop first, so no batch at the end is short for want of clients.
        await asyncio.gather(*[client(0.001, rounds) for _ in range(fast)], *[client(MODEL_S / 2, rounds // 2) for _ in range(2)])
    finally:
        await batcher.stop()


def test_answered_clients_join_the_next_batch() -> None:
    sizes: list[int] = []
    asyncio.run(_closed_loop(Batcher(_model(sizes), ServeSettings(batch_wait_ms=10)), fast=7, rounds=12))
    # Every pass carries (almost) every client: 12 rounds in about 12 passes. Without the
    # window, the two slow requests went alone after each pass: [2, 7, 2, 7, ...], 18 passes.
    assert len(sizes) <= 14 and min(sizes[1:]) >= 7, sizes


def test_a_lone_client_never_waits_for_the_window() -> None:
    sizes: list[int] = []

    async def lone() -> float:
        b = Batcher(_model(sizes), ServeSettings(batch_wait_ms=500))
        b.start()
        try:
            t = time.perf_counter()
            for _ in range(3):
                await b.submit(["text"])
            return time.perf_counter() - t
        finally:
            await b.stop()

    assert asyncio.run(lone()) < 3 * MODEL_S + 0.4  # never the 0.5 s window
    assert sizes == [1, 1, 1]

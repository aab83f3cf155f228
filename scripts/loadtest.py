#!/usr/bin/env python
"""Load generator for any running ``gptclf serve``: N concurrent keep-alive clients send
``POST /v1/classify`` until R requests are done, then print requests/s and latency
percentiles.

    python scripts/loadtest.py --url http://127.0.0.1:8000 --concurrency 32 --requests 2000

Standard library only (asyncio and a minimal HTTP/1.1 client), so the generator itself
costs little CPU next to the server it measures. Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

MESSAGES = [
    "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward!",
    "Ok lar... Joking wif u oni...",
    "Are we still meeting for lunch tomorrow at noon?",
    "URGENT! Your mobile number has won a 2000 bonus caller prize. Call 09061701461 now.",
    "I'll be home late tonight, don't wait for me for dinner.",
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121",
    "Sorry, I'll call later",
    "Had your mobile 11 months or more? U R entitled to Update to the latest colour mobiles with camera for Free!",
]


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    concurrency: int
    texts_per_request: int
    status_counts: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


class _Conn:
    """One keep-alive HTTP/1.1 connection (reopened if the server closes it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n".encode() + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def run_load(url: str, concurrency: int = 32, requests: int = 2000, texts_per_request: int = 1,
                   timeout: float = 30.0) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path.rstrip("/") or "") + "/v1/classify"
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    first_error: list[str] = []
    issued = failed = 0

    async def client(cid: int) -> None:
        nonlocal issued, failed
        conn = _Conn(host, port)
        try:
            while issued < requests:
                n = issued
                issued += 1
                texts = [MESSAGES[(n + j) % len(MESSAGES)] for j in range(texts_per_request)]
                body = json.dumps({"texts": texts}).encode()
                t = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.post(path, body), timeout)
                    ok = status == 200 and len(json.loads(data)["results"]) == texts_per_request
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, KeyError) as e:
                    status, ok, data = 0, False, repr(e).encode()
                    await conn.close()
                latencies.append(time.perf_counter() - t)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                failed += not ok
                if not ok and not first_error:
                    first_error.append(f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}")
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    seconds = time.perf_counter() - t0
    lat = sorted(x * 1000 for x in latencies)
    return Result(len(latencies), failed, seconds, len(latencies) / seconds, percentile(lat, 50),
                  percentile(lat, 90), percentile(lat, 99), lat[-1] if lat else float("nan"),
                  concurrency, texts_per_request, statuses, first_error[0] if first_error else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    p.add_argument("--requests", type=int, default=2000, help="requests in all")
    p.add_argument("--texts", type=int, default=1, help="texts per request")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    r = asyncio.run(run_load(args.url, args.concurrency, args.requests, args.texts, args.timeout))
    if args.json:
        print(json.dumps(asdict(r)))
    else:
        print(f"{r.requests} requests ({r.texts_per_request} text(s) each), {r.concurrency} clients: "
              f"{r.requests_per_second:.0f} requests/s, p50 {r.p50_ms:.1f} ms, p90 {r.p90_ms:.1f} ms, "
              f"p99 {r.p99_ms:.1f} ms, max {r.max_ms:.1f} ms, errors {r.errors} {r.status_counts}")
        if r.first_error:
            print(f"first error: {r.first_error}", file=sys.stderr)
    return 1 if r.errors else 0


if __name__ == "__main__":
    sys.exit(main())

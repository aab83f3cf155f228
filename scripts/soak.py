#!/usr/bin/env python
"""Soak test for any running ``gptclf serve``: healthy traffic mixed with hostile clients,
round after round, then a report of requests served, errors by kind and server memory.

    python scripts/soak.py --url http://127.0.0.1:8000 --rounds 5 --pid $(pgrep -f 'gptclf serve')
    python scripts/soak.py --url ... --model runs/latest   # also check every answer is right

Each round runs, at the same time:

* a stream of healthy ``POST /v1/classify`` requests on keep-alive connections, whose
  answers must be 200 with the same label and score as the model in-process (``--model``)
  or, without it, the same answer every time for the same text;
* hostile clients, each on its own connection: malformed JSON, wrong types, over-limit
  bodies (declared, and chunked with no Content-Length), too many / too long texts, wrong
  method and route, wrong content type, slow clients (trickled or stalled headers or body,
  or a keep-alive connection that stalls in its second request's headers),
  clients that hang up mid-request or before the answer, and many idle sockets held open;

then a burst of concurrent requests beyond the server's queue bound, which must answer
200 (right result) or 503 with Retry-After, and 100+ concurrent health checks.

Every error answer must be JSON ``{"error": {"code", "message"}}`` with no traceback and no
file path. Slow clients must be cut off by the server (``--client-timeout`` of ``gptclf
serve``), idle sockets closed. With ``--pid`` (local server) the server's RSS is read from
/proc after each round. Standard library only. Exit status 1 on any unexpected outcome, 2 if the server cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from loadtest import MESSAGES as LOAD_MESSAGES  # scripts/ is on sys.path when run as a script

# The load test's messages, plus one that exercises non-ASCII text end to end.
MESSAGES = [*LOAD_MESSAGES, "Ünïcödé ✓ 日本語のメッセージ 🙂"]

# What an error body must never show: a stack trace or where the server's files are.
LEAK = re.compile(r"Traceback|File \"|/work/|/tmp/|/home/|/usr/|site-packages|\.py\b")


@dataclass
class Report:
    rounds: int = 0
    seconds: float = 0.0
    healthy: int = 0                      # healthy requests answered 200 with the right result
    healthy_per_round: list[int] = field(default_factory=list)
    burst: Counter = field(default_factory=Counter)     # status -> count, over-queue bursts
    bad: Counter = field(default_factory=Counter)       # hostile kind -> clients run
    outcomes: Counter = field(default_factory=Counter)  # "kind -> status/closed" as seen
    failures: list[str] = field(default_factory=list)   # unexpected outcomes (first few kept)
    failure_count: int = 0
    rss_kb: list[int] = field(default_factory=list)     # server VmRSS after each round
    healthy_end: bool = False

    def fail(self, what: str) -> None:
        self.failure_count += 1
        if len(self.failures) < 20:
            self.failures.append(what)

    @property
    def rss_growth_kb(self) -> int | None:
        """Growth after the warm-up round: last reading minus the first one."""
        return self.rss_kb[-1] - self.rss_kb[0] if len(self.rss_kb) >= 2 else None

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs.
        d = {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}
        d["rss_growth_kb"] = self.rss_growth_kb
        return d


def read_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------- a tiny HTTP client


class Closed(Exception):
    """The server closed the connection without (or before the end of) an answer."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise Closed(repr(e)) from None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    try:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise Closed(repr(e)) from None
    return status, headers, body


def request_head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Soak:
    def __init__(self, url: str, expected: Callable[[str], tuple[str, float]] | None = None,
                 seed: int = 0, slow_wait: float = 30.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.base = parts.path.rstrip("/")
        self.expected = expected
        self.seen: dict[str, tuple[str, float]] = {}   # without --model: answers must not change
        self.rng = random.Random(seed)
        self.slow_wait = slow_wait      # how long a slow client waits for the server to cut it off
        self.report = Report()
        self.limits: dict[str, Any] = {}

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def simple(self, method: str, path: str, body: bytes = b"",
                     headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await self.connect()
        try:
            h = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"}
            h.update(headers or {})
            writer.write(request_head(method, self.base + path, f"{self.host}:{self.port}", h) + body)
            await writer.drain()
            return await asyncio.wait_for(read_response(reader), 60)
        finally:
            writer.close()

    # ------------------------------------------------------------------ checking answers

    def check_results(self, texts: list[str], body: bytes, where: str) -> bool:
        try:
            results = json.loads(body)["results"]
        except (ValueError, KeyError, TypeError):
            self.report.fail(f"{where}: 200 without results: {body[:200]!r}")
            return False
        if len(results) != len(texts):
            self.report.fail(f"{where}: {len(results)} results for {len(texts)} texts")
            return False
        for t, r in zip(texts, results):
            if self.expected is not None:
                label, score = self.expected(t)
            else:
                label, score = self.seen.setdefault(t, (r["label"], r["score"]))
            # Scores of a text batched with others differ from a lone forward pass only by
            # float rounding; the label must be the same.
            if r["label"] != label or abs(r["score"] - score) > 1e-3:
                self.report.fail(f"{where}: {t[:30]!r} -> {r['label']} {r['score']:.5f}, "
                                 f"expected {label} {score:.5f}")
                return False
        return True

    def check_error(self, kind: str, status: int, headers: dict[str, str], body: bytes,
                    allowed: tuple[int, ...]) -> None:
        self.report.outcomes[f"{kind} -> {status}"] += 1
        text = body.decode("utf-8", "replace")
        if status not in allowed:
            self.report.fail(f"{kind}: HTTP {status} (expected {allowed}): {text[:200]}")
            return
        if LEAK.search(text):
            self.report.fail(f"{kind}: error body shows server internals: {text[:300]}")
            return
        try:
            err = json.loads(body)["error"]
            assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]
        except (ValueError, KeyError, TypeError, AssertionError):
            self.report.fail(f"{kind}: HTTP {status} error is not {{'error': {{code, message}}}}: {text[:200]}")
            return
        if status == 503 and "retry-after" not in headers:
            self.report.fail(f"{kind}: 503 without Retry-After")

    # --------------------------------------------------------------------- healthy stream

    async def healthy_client(self, stop: asyncio.Event, cid: int) -> None:
        reader = writer = None
        n = 0
        try:
            while not stop.is_set() or n == 0:
                if writer is None:
                    reader, writer = await self.connect()
                k = 1 + (cid + n) % 3
                texts = [MESSAGES[(cid * 7 + n * 3 + j) % len(MESSAGES)] for j in range(k)]
                body = json.dumps({"texts": texts}).encode()
                writer.write(request_head("POST", self.base + "/v1/classify", f"{self.host}:{self.port}", {
                    "Content-Type": "application/json", "Content-Length": str(len(body))}) + body)
                await writer.drain()
                n += 1
                try:
                    status, headers, data = await asyncio.wait_for(read_response(reader), 30)
                except (Closed, asyncio.TimeoutError) as e:
                    # The server may close an idle keep-alive connection between requests, never
                    # in the middle of one: the request had been sent, so this is a failure.
                    self.report.fail(f"healthy: no answer ({e!r})")
                    writer.close()
                    reader = writer = None
                    continue
                if status != 200:
                    self.report.fail(f"healthy: HTTP {status}: {data[:200]!r}")
                elif self.check_results(texts, data, "healthy"):
                    self.report.healthy += 1
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    # ------------------------------------------------------------------ hostile clients

    async def bad_simple(self, kind: str, method: str, path: str, body: bytes, allowed: tuple[int, ...],
                         headers: dict[str, str] | None = None) -> None:
        try:
            status, h, data = await self.simple(method, path, body, headers)
        except (Closed, OSError, asyncio.TimeoutError) as e:
            self.report.outcomes[f"{kind} -> closed"] += 1
            self.report.fail(f"{kind}: no answer ({e!r})")
            return
        self.check_error(kind, status, h, data, allowed)

    async def over_limit(self, chunked: bool) -> None:
        """A body over --max-body-bytes: declared up front, or streamed chunked without a
        Content-Length. The server must answer 413 once the limit is passed, not read on."""
        kind = "huge_chunked" if chunked else "huge_declared"
        limit = int(self.limits.get("max_body_bytes", 1_000_000))
        reader, writer = await self.connect()
        try:
            h = {"Content-Type": "application/json"}
            sent, piece = 0, b'{"texts": ["' + b"a" * 65536
            # Declared: more than is sent below, so no byte of it reads as a next request.
            h.update({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(limit + 4 * len(piece))})
            writer.write(request_head("POST", self.base + "/v1/classify", f"{self.host}:{self.port}", h))
            # Send a little over the limit, then wait for the answer (sending all of a huge
            # declared body would only test the kernel's socket buffers).
            while sent <= limit + len(piece):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                await writer.drain()
            status, headers, data = await asyncio.wait_for(read_response(reader), 30)
            self.check_error(kind, status, headers, data, (413,))
        except (Closed, OSError, asyncio.TimeoutError) as e:
            self.report.outcomes[f"{kind} -> closed"] += 1
            self.report.fail(f"{kind}: no 413 ({e!r})")
        finally:
            writer.close()

    async def slow(self, kind: str) -> None:
        """A slow client: headers trickled or stalled, or the body trickled or stalled after
        complete headers. The server must cut it off (closing the connection, or answering
        408 once the application is reading the body) within its client timeout."""
        reader, writer = await self.connect()
        body = json.dumps({"texts": [MESSAGES[0]]}).encode()
        head = request_head("POST", self.base + "/v1/classify", f"{self.host}:{self.port}", {
            "Content-Type": "application/json", "Content-Length": str(len(body))})
        t0 = time.monotonic()

        async def trickle(data: bytes) -> None:
            for i in range(len(data)):
                writer.write(data[i: i + 1])
                await writer.drain()
                await asyncio.sleep(0.2)

        try:
            if kind == "slow_headers":       # slowloris: a byte of headers at a time, never done
                sender = asyncio.ensure_future(trickle(head))
            elif kind == "stalled_headers":  # half the headers, then nothing
                writer.write(head[: len(head) // 2])
                sender = None
            elif kind == "stalled_keepalive":  # one good request, then half of the next one's headers
                writer.write(head + body)
                status, _, data = await asyncio.wait_for(read_response(reader), 30)
                if status != 200 or not self.check_results([MESSAGES[0]], data, kind):
                    self.report.fail(f"{kind}: first request answered {status}")
                t0 = time.monotonic()
                writer.write(head[: len(head) // 2])
                sender = None
            elif kind == "slow_body":        # full headers, the body a byte at a time
                writer.write(head)
                sender = asyncio.ensure_future(trickle(body * 50))
            else:                            # stalled_body: full headers, half the body
                writer.write(head + body[: len(body) // 2])
                sender = None
            await writer.drain()
            try:
                status, headers, data = await asyncio.wait_for(read_response(reader), self.slow_wait)
            except asyncio.TimeoutError:
                self.report.outcomes[f"{kind} -> not cut off"] += 1
                self.report.fail(f"{kind}: the server still held the connection after {self.slow_wait:g} s")
                return
            except Closed:
                self.report.outcomes[f"{kind} -> closed"] += 1
                if kind.endswith("body"):  # the application was reading: it must say 408
                    self.report.fail(f"{kind}: connection closed without a 408")
                return
            finally:
                if sender is not None:
                    sender.cancel()
            self.check_error(kind, status, headers, data, (408,))
            self.report.outcomes[f"{kind}: seconds before the 408"] = round(time.monotonic() - t0)
        except (Closed, asyncio.TimeoutError) as e:  # stalled_keepalive: no answer to the good request
            self.report.fail(f"{kind}: {e!r}")
        except OSError as e:  # reset while trickling: the server cut it off
            self.report.outcomes[f"{kind} -> reset"] += 1
            if kind.endswith("body"):
                self.report.fail(f"{kind}: connection reset without a 408 ({e!r})")
        finally:
            writer.close()

    async def hang_up(self, kind: str) -> None:
        """Clients that disconnect: mid-headers, mid-body, or right after a complete request
        (the server computes an answer nobody reads)."""
        reader, writer = await self.connect()
        body = json.dumps({"texts": MESSAGES[:3]}).encode()
        data = request_head("POST", self.base + "/v1/classify", f"{self.host}:{self.port}", {
            "Content-Type": "application/json", "Content-Length": str(len(body))}) + body
        cut = {"hangup_headers": 20, "hangup_body": len(data) - len(body) // 2}.get(kind, len(data))
        writer.write(data[:cut])
        await writer.drain()
        if kind == "hangup_before_answer":
            await asyncio.sleep(0.01)
        writer.close()
        self.report.outcomes[f"{kind} -> client left"] += 1

    async def idle_sockets(self, n: int, hold: float) -> None:
        """``n`` connections that never send a byte, held for ``hold`` seconds while the
        healthy stream goes on; counts how many the server closed by then."""
        conns = []
        for _ in range(n):
            try:
                conns.append(await self.connect())
            except OSError as e:
                self.report.fail(f"idle_sockets: connect failed ({e!r})")
                break
        await asyncio.sleep(hold)
        closed = 0
        for reader, writer in conns:
            try:
                got = await asyncio.wait_for(reader.read(1), 0.05)
                closed += got == b""
            except asyncio.TimeoutError:
                pass
            except ConnectionError:
                closed += 1
            writer.close()
        self.report.outcomes["idle_sockets opened"] += len(conns)
        self.report.outcomes["idle_sockets closed by server"] += closed

    async def burst(self, n: int) -> None:
        """``n`` concurrent requests of the most texts allowed: beyond the queue bound some must
        get 503 + Retry-After, the others 200 with right answers."""
        k = int(self.limits.get("max_texts", 8))
        texts = [MESSAGES[i % len(MESSAGES)] for i in range(k)]
        body = json.dumps({"texts": texts}).encode()

        async def one() -> None:
            try:
                status, headers, data = await self.simple("POST", "/v1/classify", body)
            except (Closed, OSError, asyncio.TimeoutError) as e:
                self.report.fail(f"burst: no answer ({e!r})")
                return
            self.report.burst[str(status)] += 1
            if status == 200:
                self.check_results(texts, data, "burst")
            else:
                self.check_error("burst", status, headers, data, (503,))

        await asyncio.gather(*(one() for _ in range(n)))

    async def many_health_checks(self, n: int) -> None:
        async def one() -> None:
            try:
                status, _, data = await self.simple("GET", "/healthz")
            except (Closed, OSError, asyncio.TimeoutError) as e:
                self.report.fail(f"healthz: no answer ({e!r})")
                return
            self.report.outcomes[f"concurrent_healthz -> {status}"] += 1
            if status != 200:
                self.report.fail(f"healthz: HTTP {status}")

        await asyncio.gather(*(one() for _ in range(n)))

    # ------------------------------------------------------------------------- rounds

    def bad_clients(self) -> list[tuple[str, Callable[[], Any]]]:
        lim = self.limits
        too_many = json.dumps({"texts": ["x"] * (int(lim.get("max_texts", 64)) + 1)}).encode()
        too_long = json.dumps({"texts": ["y" * (int(lim.get("max_text_chars", 10_000)) + 1)]}).encode()
        C = "/v1/classify"
        simple: list[tuple[str, str, str, bytes, tuple[int, ...], dict[str, str] | None]] = [
            ("malformed_json", "POST", C, b'{"texts": ["unclosed', (400,), None),
            ("malformed_json", "POST", C, bytes(self.rng.randrange(256) for _ in range(64)), (400,), None),
            ("malformed_json", "POST", C, b"", (400, 422), None),
            ("wrong_types", "POST", C, b'{"texts": "one string"}', (422,), None),
            ("wrong_types", "POST", C, b'{"texts": [1, null, {"a": 2}]}', (422,), None),
            ("wrong_types", "POST", C, b'[["a"]]', (422,), None),
            ("wrong_types", "POST", C, b'{"texts": ["a"], "extra": 1e999}', (422,), None),
            ("empty_texts", "POST", C, b'{"texts": []}', (422,), None),
            ("too_many_texts", "POST", C, too_many, (422,), None),
            ("text_too_long", "POST", C, too_long, (422,), None),
            ("wrong_content_type", "POST", C, b'{"texts": ["hi"]}', (415,), {"Content-Type": "text/plain"}),
            ("wrong_method", "GET", C, b"", (405,), None),
            ("unknown_route", "POST", "/v1/nothing", b"{}", (404,), None),
        ]
        clients: list[tuple[str, Callable[[], Any]]] = [
            (kind, lambda m=m, p=p, b=b, a=a, h=h, kind=kind: self.bad_simple(kind, m, p, b, a, h))
            for kind, m, p, b, a, h in simple]
        clients += [("huge_declared", lambda: self.over_limit(False)), ("huge_chunked", lambda: self.over_limit(True))]
        clients += [(k, lambda k=k: self.slow(k))
                    for k in ("slow_headers", "stalled_headers", "stalled_keepalive", "slow_body", "stalled_body")]
        clients += [(k, lambda k=k: self.hang_up(k))
                    for k in ("hangup_headers", "hangup_body", "hangup_before_answer")]
        return clients

    async def one_round(self, healthy_clients: int, idle: int, burst: int, hold: float) -> None:
        stop = asyncio.Event()
        healthy = [asyncio.ensure_future(self.healthy_client(stop, i)) for i in range(healthy_clients)]
        hostile = []
        for kind, make in self.bad_clients():
            self.report.bad[kind] += 1
            hostile.append(asyncio.ensure_future(make()))
            await asyncio.sleep(0.01)  # spread them over the round
        self.report.bad["idle_sockets"] += idle
        hostile.append(asyncio.ensure_future(self.idle_sockets(idle, hold)))
        await asyncio.gather(*hostile)
        stop.set()
        await asyncio.gather(*healthy)
        self.report.bad["burst"] += burst
        await self.burst(burst)
        await self.many_health_checks(idle)

    async def run(self, rounds: int, healthy_clients: int = 4, idle: int = 120, burst: int = 48,
                  hold: float | None = None, pid: int | None = None) -> Report:
        t0 = time.monotonic()
        status, _, data = await self.simple("GET", "/v1/model")
        if status != 200:
            raise SystemExit(f"GET /v1/model answered {status}: is {self.host}:{self.port} a gptclf server?")
        self.limits = json.loads(data).get("limits", {})
        # Idle sockets are held a little longer than the server's client timeout, so the
        # round sees whether the server closes them.
        hold = hold if hold is not None else float(self.limits.get("client_timeout_s", 10)) + 1.0
        for _ in range(rounds):
            before = self.report.healthy
            await self.one_round(healthy_clients, idle, burst, hold)
            self.report.rounds += 1
            self.report.healthy_per_round.append(self.report.healthy - before)
            if pid is not None:
                self.report.rss_kb.append(read_rss_kb(pid))
        try:
            status, _, data = await self.simple("GET", "/healthz")
            self.report.healthy_end = status == 200 and json.loads(data)["status"] == "ok"
        except (Closed, OSError, asyncio.TimeoutError, ValueError, KeyError):
            self.report.healthy_end = False
        if not self.report.healthy_end:
            self.report.fail("the server is not healthy at the end")
        self.report.seconds = time.monotonic() - t0
        return self.report


def expected_from_model(model_dir: str) -> Callable[[str], tuple[str, float]]:
    """Answers of the model in-process, one text at a time, for checking the server's."""
    from gptclf.inference.classifier import Classifier

    clf = Classifier.load(model_dir, device="cpu")
    cache: dict[str, tuple[str, float]] = {}

    def expected(text: str) -> tuple[str, float]:
        if text not in cache:
            r = clf.predict(text)[0]
            cache[text] = (r["label"], r["score"])
        return cache[text]

    for m in MESSAGES:
        expected(m)
    return expected


def summary(r: Report) -> str:
    bad = sum(v for k, v in r.bad.items())
    lines = [f"{r.rounds} rounds in {r.seconds:.1f}s: {r.healthy} healthy requests answered right "
             f"(per round {r.healthy_per_round}), "
             f"{bad} hostile clients, burst {dict(r.burst)}",
             "hostile clients by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(r.bad.items())),
             "outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(r.outcomes.items()))]
    if r.rss_kb:
        lines.append(f"server RSS after each round (MiB): {', '.join(f'{x / 1024:.1f}' for x in r.rss_kb)}; "
                     f"growth after round 1: {(r.rss_growth_kb or 0) / 1024:+.1f} MiB")
    lines.append(f"healthy at the end: {r.healthy_end}; unexpected outcomes: {r.failure_count}")
    lines += [f"  {f}" for f in r.failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--healthy-clients", type=int, default=4, help="concurrent keep-alive healthy clients")
    p.add_argument("--idle", type=int, default=120, help="idle sockets held open per round")
    p.add_argument("--burst", type=int, default=48, help="concurrent requests in the over-queue burst")
    p.add_argument("--hold", type=float, default=None,
                   help="seconds idle sockets are held (default: the server's client timeout + 1)")
    p.add_argument("--pid", type=int, default=None, help="the server's process id (local): report its RSS")
    p.add_argument("--model", default=None, help="the served model directory: check answers against it")
    p.add_argument("--max-rss-growth-mb", type=float, default=None, help="fail if RSS grows more after round 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    expected = expected_from_model(args.model) if args.model else None
    soak = Soak(args.url, expected, args.seed)
    try:
        r = asyncio.run(soak.run(args.rounds, args.healthy_clients, args.idle, args.burst, args.hold, args.pid))
    except OSError as e:
        print(f"soak: cannot reach {args.url} ({e.strerror or e})", file=sys.stderr)
        return 2
    if args.max_rss_growth_mb is not None and (r.rss_growth_kb or 0) > args.max_rss_growth_mb * 1024:
        r.fail(f"RSS grew {(r.rss_growth_kb or 0) / 1024:.1f} MiB after round 1")
    print(json.dumps(r.as_dict()) if args.json else summary(r))
    return 1 if r.failure_count else 0


if __name__ == "__main__":
    sys.exit(main())

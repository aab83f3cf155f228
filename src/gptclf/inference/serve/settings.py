"""The limits of ``gptclf serve``, apart from serve.py so that building the CLI parser
does not import FastAPI."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...config import opt
from ...errors import GptclfError

BATCHING, LIMITS = "batching", "limits"


@dataclass
class ServeSettings:
    """Every limit of the service; those with help text are ``gptclf serve`` options."""

    max_batch_size: int = opt(64, "texts per forward pass", BATCHING)
    batch_wait_ms: float = opt(5.0, "under load (fewer requests waiting than shared the previous batch), how "
                               "long a batch is held open for the others", BATCHING)
    batching: bool = opt(True, "one request per forward pass", BATCHING, flag="--no-batching")
    max_queue: int = opt(256, "requests waiting for the model before new ones get 503 + Retry-After", LIMITS)
    timeout_s: float = opt(10.0, "seconds per request before 504", LIMITS, flag="--timeout")
    client_timeout_s: float = opt(10.0, "seconds a client has to send its request headers (else the connection "
                                  "is closed) and then its body (else 408): slow or stalled clients cannot hold "
                                  "connections", LIMITS, flag="--client-timeout")
    max_body_bytes: int = opt(1_000_000, "413 above this", LIMITS)
    max_texts: int = opt(64, "texts per request; 422 above", LIMITS)
    max_text_chars: int = opt(10_000, "characters per text; 422 above", LIMITS)
    cors_origins: list[str] = opt(None, "allow browser pages from ORIGIN to call the API (repeatable; off by "
                                  "default)", factory=list, flag="--cors-origin", metavar="ORIGIN")
    retry_after_s: int = 1          # the Retry-After of a 503
    batch_size: int = 32            # the classifier's own mini-batch inside one forward call

    def check(self) -> "ServeSettings":
        for name, flag in (("batch_wait_ms", "--batch-wait-ms"), ("timeout_s", "--timeout"),
                           ("client_timeout_s", "--client-timeout")):
            if not math.isfinite(getattr(self, name)):
                raise GptclfError(f"{flag} must be a finite number, not {getattr(self, name)}")
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_texts", "max_text_chars"):
            if getattr(self, name) < 1:
                raise GptclfError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise GptclfError(f"--batch-wait-ms must not be negative, not {self.batch_wait_ms}")
        if not self.timeout_s > 0:
            raise GptclfError(f"--timeout must be positive, not {self.timeout_s}")
        if not self.client_timeout_s > 0:
            raise GptclfError(f"--client-timeout must be positive, not {self.client_timeout_s}")
        return self


DEFAULTS = ServeSettings()

"""The limits of ``gptclf serve``, apart from serve.py so that building the CLI parser
does not import FastAPI."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import GptclfError


@dataclass
class ServeSettings:
    """Every limit of the service; each is a ``gptclf serve`` flag."""

    max_batch_size: int = 64        # texts per forward pass
    batch_wait_ms: float = 5.0      # collection window opened by the first waiting request
    batching: bool = True           # False: one request per forward pass (for comparison)
    max_queue: int = 256            # requests waiting for the model; beyond: 503
    timeout_s: float = 10.0         # per request, queueing included; beyond: 504
    client_timeout_s: float = 10.0  # to send a whole request (headers, then body); beyond: closed / 408
    max_body_bytes: int = 1_000_000
    max_texts: int = 64             # per request
    max_text_chars: int = 10_000    # per text
    retry_after_s: int = 1
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers at all
    batch_size: int = 32            # the classifier's own mini-batch inside one forward call

    def check(self) -> "ServeSettings":
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

"""Texts longer than ``--max-length``: cut them, keep their head and tail, or read them whole.

``--long-text`` chooses (:class:`LongText`, recorded in config.json ``long_text``):

* ``truncate``: the text's first tokens, the rest is dropped (the book's behaviour);
* ``head-tail``: the first quarter and the last three quarters of the room the template
  leaves (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": the head+tail
  split of 128 + 382 tokens of 510 was their best); the middle is dropped;
* ``chunk``: the whole text, as windows of ``--max-length`` tokens (the template around
  each) overlapping by ``--stride`` tokens; the model pools each window, a learned
  aggregation (:class:`gptclf.models.classifier.WindowPool`) combines one text's windows
  into one vector, and the head classifies it. One text is one example, whatever its number
  of windows. Past ``--max-windows`` the middle windows are dropped (the first ones and the
  last one stay), and only then is the text ``truncated``.

Left out, the mode is chosen from the training data (:func:`choose_mode`): ``chunk`` when more
than :data:`AUTO_CHUNK_SHARE` of the training texts would be cut, else ``truncate``, which is
then exactly the path gptclf always took.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import GptclfError, warn

LONG_TEXT_MODES = ("truncate", "head-tail", "chunk")
AGGREGATIONS = ("attention", "max", "mean")
# --long-text left out: chunk when more than this share of the training texts would be cut.
AUTO_CHUNK_SHARE = 0.05
# head-tail: the head's share of the room (Sun et al. 2019's 128 of 510 tokens).
HEAD_SHARE = 0.25
DEFAULT_MAX_WINDOWS = 16
# --stride left out: windows overlap by this share of their room, so a phrase cut by one
# window's end is read whole by the next one, at 1/8 more tokens than no overlap.
DEFAULT_OVERLAP = 0.125


@dataclass(frozen=True)
class LongText:
    """How texts longer than the room the template leaves are fed to the model."""

    mode: str = "truncate"
    stride: int | None = None   # chunk: tokens shared by consecutive windows (None: DEFAULT_OVERLAP of the room)
    max_windows: int = DEFAULT_MAX_WINDOWS
    aggregation: str = "attention"

    @property
    def chunked(self) -> bool:
        return self.mode == "chunk"

    def overlap(self, room: int) -> int:
        """The tokens consecutive windows share, for windows of ``room`` text tokens."""
        s = int(room * DEFAULT_OVERLAP) if self.stride is None else self.stride
        if not 0 <= s < room:
            raise GptclfError(f"--stride {s} must be at least 0 and less than the {room} text tokens a window "
                              "holds", hint="use a smaller --stride or a larger --max-length")
        return s

    def check(self) -> None:
        if self.mode not in LONG_TEXT_MODES:
            raise GptclfError(f"--long-text must be one of {', '.join(LONG_TEXT_MODES)}, not {self.mode!r}")
        if self.aggregation not in AGGREGATIONS:
            raise GptclfError(f"--aggregation must be one of {', '.join(AGGREGATIONS)}, not {self.aggregation!r}")
        if self.max_windows < 1:
            raise GptclfError(f"--max-windows must be at least 1, not {self.max_windows}")
        if self.stride is not None and self.stride < 0:
            raise GptclfError(f"--stride must be at least 0, not {self.stride}")

    def to_config(self) -> dict[str, Any] | None:
        """config.json ``long_text`` (None for ``truncate``: such directories stay as they were)."""
        if self.mode == "truncate":
            return None
        out: dict[str, Any] = {"mode": self.mode}
        if self.chunked:
            out.update(stride=self.stride, max_windows=self.max_windows, aggregation=self.aggregation)
        return out

    @classmethod
    def from_config(cls, d: Any, where: str = "config.json") -> "LongText":
        """config.json's ``long_text``, checked (absent: ``truncate``)."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise GptclfError(f"{where}: 'long_text' must be a JSON object")
        stride, windows = d.get("stride"), d.get("max_windows", DEFAULT_MAX_WINDOWS)
        if d.get("mode") not in LONG_TEXT_MODES or not (stride is None or _count(stride)) or not _count(windows):
            raise GptclfError(f"{where}: 'long_text' {d!r} is not valid",
                              hint="the run directory is damaged or edited; retrain it")
        lt = cls(d["mode"], stride, windows, d.get("aggregation", "attention"))
        try:
            lt.check()
        except GptclfError as e:
            raise GptclfError(f"{where}: 'long_text': {e.message}") from None
        return lt


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass
class Fitted:
    """Texts fitted to the model's input: ``rows`` (one per text, or with ``chunk`` one per window:
    text ``i`` is ``rows[offsets[i]:offsets[i+1]]``) and, per text, whether tokens were dropped."""

    rows: list[list[int]]
    offsets: np.ndarray | None
    truncated: list[bool]

    @property
    def windows(self) -> np.ndarray:
        """How many model inputs each text used."""
        if self.offsets is None:
            return np.ones(len(self.truncated), dtype=np.int64)
        return np.diff(self.offsets)


def room_for(pre: Sequence[int], post: Sequence[int], max_length: int, where: str) -> int:
    room = max_length - len(pre) - len(post)
    if room < 1:
        raise GptclfError(f"{where}: the template alone takes {len(pre) + len(post)} tokens, "
                          f"which leaves no room for the text within {max_length}",
                          hint="use a shorter --template or a larger --max-length")
    return room


def window_starts(n: int, room: int, overlap: int) -> list[int]:
    """Where each window of a text of ``n`` tokens starts: every ``room - overlap`` tokens, the
    last one ending at the text's end (so it is full)."""
    starts = list(range(0, max(n - room, 0) + 1, room - overlap))
    if starts[-1] + room < n:
        starts.append(n - room)
    return starts


def cap_windows(starts: list[int], max_windows: int) -> list[int]:
    """Past ``max_windows``, the middle windows are dropped: the first ones and the last one stay
    (a text's end, like its start, often says what it is about)."""
    if len(starts) <= max_windows:
        return starts
    return starts[: max_windows - 1] + [starts[-1]] if max_windows > 1 else starts[:1]


def fit_texts(ids: list[list[int]], pre: list[int], post: list[int], max_length: int, long_text: LongText,
              where: str, say: Callable[[str], None] | None = warn) -> Fitted:
    """``prefix + text + suffix`` within ``max_length`` for each text, as ``long_text`` says; ``say``
    hears how many texts lost tokens (None: nobody)."""
    room = room_for(pre, post, max_length, where)
    if long_text.chunked:
        return _windows(ids, pre, post, room, long_text, where, say)
    cut = [len(t) > room for t in ids]
    if long_text.mode == "head-tail":
        head = max(1, int(room * HEAD_SHARE)) if room > 1 else room
        rows = [pre + (t[:head] + t[len(t) - (room - head):] if c else t) + post for t, c in zip(ids, cut)]
    else:
        rows = [pre + t[:room] + post for t in ids]
    if say is not None and any(cut):
        what = "kept their first and last tokens" if long_text.mode == "head-tail" else "were truncated"
        say(f"{where}: {sum(cut)} text(s) longer than {max_length} tokens {what}")
    return Fitted(rows, None, cut)


def _windows(ids: list[list[int]], pre: list[int], post: list[int], room: int, long_text: LongText,
             where: str, say: Callable[[str], None] | None) -> Fitted:
    overlap = long_text.overlap(room)
    rows: list[list[int]] = []
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    cut = []
    for i, t in enumerate(ids):
        every = window_starts(len(t), room, overlap)
        starts = cap_windows(every, long_text.max_windows)
        rows += [pre + t[s: s + room] + post for s in starts]
        offsets[i + 1] = len(rows)
        cut.append(len(starts) < len(every))
    if say is not None and any(cut):
        say(f"{where}: {sum(cut)} text(s) need more than --max-windows {long_text.max_windows} windows; "
            "their middle was dropped")
    return Fitted(rows, offsets, cut)


def choose_mode(ids: Sequence[Sequence[int]], room: int, given: str | None) -> tuple[str, str]:
    """``--long-text`` (``given``, or chosen from the training texts' lengths) and the line that says why."""
    n_long = sum(1 for t in ids if len(t) > room)
    share = n_long / max(len(ids), 1)
    dropped = sum(max(len(t) - room, 0) for t in ids) / max(sum(len(t) for t in ids), 1)
    facts = f"{n_long} of {len(ids)} training texts ({share:.1%}) are longer than the {room} text tokens a window holds"
    if given is not None:
        return given, f"long texts: --long-text {given}; {facts}"
    if share > AUTO_CHUNK_SHARE:
        return "chunk", (f"long texts: {facts}, more than {AUTO_CHUNK_SHARE:.0%}: reading them whole in windows "
                         "(--long-text chunk; --long-text truncate cuts them instead)")
    line = f"long texts: --long-text truncate; {facts}"
    if n_long:
        line += (f": {dropped:.1%} of the training tokens are cut off (--long-text chunk reads them, "
                 "--long-text head-tail keeps each text's end)")
    return "truncate", line


def length_summary(lengths: np.ndarray, room: int, windows: np.ndarray | None = None) -> dict[str, Any]:
    """The text lengths (tokens, before fitting) of a split, for metrics.json and report.html."""
    if not len(lengths):
        return {"texts": 0}
    q = np.percentile(lengths, [50, 90, 99]).tolist()
    out: dict[str, Any] = {"texts": int(len(lengths)), "room": int(room), "mean": float(lengths.mean()),
                           "median": q[0], "p90": q[1], "p99": q[2], "max": int(lengths.max()),
                           "longer_than_room": int((lengths > room).sum())}
    if windows is not None:
        out.update(chunked=int((windows > 1).sum()), windows=int(windows.sum()), max_windows=int(windows.max()))
    return out


def describe_lengths(name: str, s: dict[str, Any]) -> str:
    """One line of :func:`length_summary`."""
    if not s.get("texts"):
        return f"{name}: no texts"
    line = (f"{name}: text lengths median {s['median']:.0f}, p90 {s['p90']:.0f}, max {s['max']} tokens; "
            f"{s['longer_than_room']} of {s['texts']} longer than {s['room']}")
    if "chunked" in s:
        line += f"; {s['chunked']} chunked into {s['windows']} windows (at most {s['max_windows']} a text)"
    return line

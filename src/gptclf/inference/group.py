"""Several classifiers in one process: one copy of the base they share, one pass of the blocks
they all froze.

A team's classifiers are usually fine-tuned from the same base, and a run stores only what
training changed (:mod:`gptclf.rundir.weights`). :meth:`ModelGroup.load` loads every run through
one :class:`gptclf.rundir.base.BaseCache`: runs whose base has the same fingerprint lay their
tensors over one copy of it, each holding as its own only the modules it changed
(:func:`gptclf.rundir.base.share_untouched`). The first ``k`` blocks two runs both left frozen
are then the very same modules, and their output for a text is the same for both: a
:class:`Trunk` runs them once (``SequenceClassifier.trunk``, the split the frozen-trunk cache of
training uses) and each member runs only its own tail and head on that hidden state
(``SequenceClassifier.tail``). Same arithmetic, done once: the probabilities are those of each
run served alone.

What shares: runs of one base that read the same token ids (tokenizer, template, max_length,
padding, causal mask, device and precision). A LoRA run merges adapters into every block, so
it shares the base's untouched tensors but no block; a self-contained run, a run of another
base and an ONNX backend run alone, side by side.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import torch

from ..data.batching import collate, sorted_batches
from ..device import autocast, pad_multiple
from ..errors import GptclfError, TextError
from ..rundir.base import BaseCache
from .classifier import Classifier

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALL = "*"  # every model


def parse_model_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``--model NAME=RUN`` (or a bare ``RUN``, named after its directory) as (name, directory)."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not NAME.match(name):
            # A bare run is named after its directory, made a name if it is none ("my run" -> my-run).
            name, path = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec).expanduser().name).strip("-._")[:64], spec
        if not NAME.match(name):
            raise GptclfError(f"--model {spec!r}: {name!r} is not a model name",
                              hint="name it: --model NAME=RUN (letters, digits, '_', '-', '.')")
        if name in {n for n, _ in out}:
            raise GptclfError(f"--model {spec!r}: the name {name!r} is given twice",
                              hint="give each run its own name: --model spam=RUN1 --model topic=RUN2")
        out.append((name, Path(path).expanduser()))
    return out


@dataclass
class Trunk:
    """Members that read the same token ids and run the same module objects as their first
    ``depth`` blocks; ``depth == 0``: one member, run on its own."""

    names: list[str]
    depth: int


def shared_depth(a: Any, b: Any) -> int:
    """How many leading blocks two classifiers' models run as the very same modules, embeddings
    included (0: none, or not even the embeddings)."""
    ba, bb = a.model.backbone, b.model.backbone
    stem = [n for n in ba._modules if n not in ("trf_blocks", "final_norm", "out_head")]
    if type(ba) is not type(bb) or any(ba._modules[n] is not bb._modules.get(n) for n in stem):
        return 0
    if ba._buffers.keys() != bb._buffers.keys() or any(ba._buffers[k] is not bb._buffers[k] for k in ba._buffers):
        return 0
    depth = 0
    for x, y in zip(ba.trf_blocks, bb.trf_blocks):
        if x is not y:
            break
        depth += 1
    return depth


def input_key(clf: Any) -> str | None:
    """What must be equal for two classifiers to read the same hidden states (None: never shares)."""
    if getattr(clf, "model", None) is None or getattr(clf, "static", None) is not None or \
            getattr(clf, "session", None) is not None:
        return None
    rc = clf.run_config
    if rc.long_text_mode.chunked:  # its texts are windows pooled by its own window pool: served alone
        return None
    tok = json.dumps(rc.tokenizer, sort_keys=True)
    if clf.directory is not None and (Path(clf.directory) / "tokenizer.json").is_file():
        tok += hashlib.sha256((Path(clf.directory) / "tokenizer.json").read_bytes()).hexdigest()
    return json.dumps([tok, rc.template, rc.max_length, rc.padding, rc.causal_mask, clf.model.causal,
                       str(clf.device), clf.precision])


def plan_trunks(models: dict[str, Any]) -> list[Trunk]:
    """Each model joins the first trunk it shares at least one block with, else starts its own."""
    trunks: list[Trunk] = []
    keys = {n: input_key(m) for n, m in models.items()}
    for name, clf in models.items():
        for t in trunks:
            lead = t.names[0]
            depth = shared_depth(models[lead], clf) if keys[name] is not None and keys[name] == keys[lead] else 0
            if depth > 0:
                t.depth = min(depth, t.depth) if len(t.names) > 1 else depth
                t.names.append(name)
                break
        else:
            trunks.append(Trunk([name], 0))
    return trunks


class ModelGroup:
    """Named classifiers answered together: ``run`` gives each text the models it asks for."""

    def __init__(self, models: dict[str, Any], load_seconds: dict[str, float] | None = None) -> None:
        if not models:
            raise GptclfError("no model to serve", hint="pass --model NAME=RUN")
        self.models = models
        self.trunks = plan_trunks(models)
        self.load_seconds = load_seconds or {}
        self.bases = 0  # distinct base copies loaded (for the start-up line)

    @classmethod
    def load(cls, specs: Sequence[tuple[str, Path]], **options: Any) -> "ModelGroup":
        """Every run of ``specs`` through one base cache (``options``: :meth:`Classifier.load`'s)."""
        bases = BaseCache()
        models: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        for name, directory in specs:
            t0 = time.perf_counter()
            try:  # an ONNX Runtime backend ignores bases: it runs its own exported graph
                models[name] = Classifier.load(directory, **options, bases=bases)
            except GptclfError as e:
                raise GptclfError(f"model {name!r}: {e.message}", hint=e.hint) from None
            seconds[name] = time.perf_counter() - t0
        group = cls(models, seconds)
        group.bases = len(bases)
        return group

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def predict_proba(self, texts: Sequence[str], models: Collection[str] | None = None,
                      batch_size: int = 32) -> dict[str, np.ndarray]:
        """Every text to every model of ``models`` (None: all): ``{name: [len(texts), classes]}``."""
        wanted = frozenset(self.names if models is None else models)
        rows = self.run([(t, wanted) for t in texts], batch_size)
        return {n: np.stack([r[n] for r in rows]) if rows else
                np.zeros((0, len(self.models[n].labels)), np.float32) for n in wanted}

    def run(self, items: Sequence[tuple[str, Collection[str]]], batch_size: int = 32) -> list[dict[str, np.ndarray]]:
        """For each ``(text, model names)``, each named model's probabilities; a trunk's shared
        blocks run once for all its members a text asks for. Raises :class:`TextError` by item index."""
        out: list[dict[str, np.ndarray]] = [{} for _ in items]
        for trunk in self.trunks:
            idx = [i for i, (_, names) in enumerate(items) if any(n in names for n in trunk.names)]
            if not idx:
                continue
            texts = [items[i][0] for i in idx]
            wanted = [items[i][1] for i in idx]
            try:
                probs = self._trunk(trunk, texts, wanted, batch_size)
            except TextError as e:
                raise TextError({idx[j]: r for j, r in e.reasons.items()}) from e
            for name, (rows, p) in probs.items():
                bad = [idx[rows[j]] for j in np.flatnonzero(~np.isfinite(p).all(1))]
                if bad:  # JSON has no NaN, and a NaN row has no meaningful label
                    raise TextError({i: "the model's scores are not finite" for i in bad})
                for j, r in enumerate(rows):
                    out[idx[r]][name] = p[j]
        return out

    def _trunk(self, trunk: Trunk, texts: list[str], wanted: list[Collection[str]],
               batch_size: int) -> dict[str, tuple[list[int], np.ndarray]]:
        """Each member's rows (of ``texts``) and their probabilities."""
        if trunk.depth == 0:
            (name,) = trunk.names
            return {name: (list(range(len(texts))), np.asarray(self.models[name].predict_proba(texts, batch_size)))}
        lead = self.models[trunk.names[0]]
        ids = lead.encode_with_flags(texts)[0].rows
        return self._shared(trunk, ids, wanted, batch_size)

    @torch.inference_mode()
    def _shared(self, trunk: Trunk, ids: list[list[int]], wanted: list[Collection[str]],
                batch_size: int) -> dict[str, tuple[list[int], np.ndarray]]:
        """The trunk's blocks once per batch, then each member's tail on the rows that asked for it:
        batched as :meth:`Classifier.proba_from_ids` batches (length-sorted, the same token budget)."""
        lead = self.models[trunk.names[0]]
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
        batches = sorted_batches(lengths, batch_size, None if lead.pad_to else lead.max_batch_tokens)
        rows: dict[str, list[int]] = {n: [] for n in trunk.names}
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in trunk.names}
        for idx in batches:
            batch, lens = collate([ids[i] for i in idx], lead.tokenizer.pad_id, lead.pad_to, pad_multiple(lead.device))
            batch, lens = batch.to(lead.device), lens.to(lead.device)
            with autocast(lead.device, lead.precision):
                hidden = lead.model.trunk(batch, trunk.depth, lens)
            for name in trunk.names:
                pick = [j for j, i in enumerate(idx) if name in wanted[i]]
                if not pick:
                    continue
                clf = self.models[name]
                h, n = hidden, lens
                if len(pick) < len(idx):
                    sel = torch.tensor(pick, device=lead.device)
                    h, n = hidden[sel], lens[sel]
                with autocast(lead.device, lead.precision):
                    logits = clf.model.tail(h, n, trunk.depth).float()
                parts[name].append(clf.task.probabilities(logits / clf.temperature))
                rows[name] += [idx[j] for j in pick]
        return {n: (rows[n], torch.cat(parts[n]).cpu().numpy()) for n in trunk.names if rows[n]}

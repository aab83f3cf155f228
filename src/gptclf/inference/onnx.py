"""ONNX: the classifier as a portable graph, its int8 variant, and an ONNX Runtime session.

``gptclf export --format onnx RUN OUT`` writes::

    OUT/
      model.onnx (+ model.onnx.data)   fp32 graph: input_ids [batch, seq] int64,
                                       lengths [batch] int64 -> logits, probabilities
      model.int8.onnx                  the same graph, linears in dynamic int8 (ONNX Runtime)
      onnx.json                        how to feed it: tokenizer, template, max_length, pad id,
                                       pooling, labels, padding side, parity numbers
      config.json, tokenizer.json      the run's own files: Classifier.load(OUT) works

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript). The older
TorchScript exporter also works on these models but warns that it will be removed; the
dynamo one keeps each node's module path in its metadata, which is what lets the int8
step keep named linears in fp32.

int8 replaces the deprecated ``torch.ao.quantization.quantize_dynamic``: ONNX Runtime's
``quantize_dynamic`` turns each selected ``MatMul`` into int8 weights (per output channel)
with activations quantized per input tensor at run time (so the int8 session runs each text
alone: :class:`OnnxSession`'s ``per_row``). The family's ``int8_fp32_linears`` (the
linears whose inputs carry outlier channels; see :mod:`gptclf.models.llama`) stay fp32, as
do embeddings, norms, attention products and the class head.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .. import tasks
from ..errors import GptclfError
from ..files import atomic_directory, file_inside, plain_name, read_json_object, write_json_atomic
from ..models import registry

MANIFEST = "onnx.json"
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
FORMAT = "gptclf-onnx/1"
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| accepted for the fp32 graph


def require_onnx() -> None:
    """A clear message instead of an ImportError when the optional extra is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise GptclfError("ONNX export and the onnxruntime backend need the 'onnx' extra",
                          hint="pip install 'gptclf[onnx]'") from None


class ProbabilityGraph(nn.Module):
    """What the exported graph computes, in fp32: the logits divided by the run's calibration
    temperature, and the task's probabilities of them (gptclf's: a softmax, or for label sets
    one sigmoid per label; :mod:`gptclf.tasks`)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, task: tasks.Task = tasks.SINGLE_LABEL) -> None:
        super().__init__()
        self.m = model
        self.temperature = float(temperature)
        self.task = task

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.m(input_ids, lengths).float() / self.temperature
        return logits, self.task.probabilities(logits)


class VectorGraph(nn.Module):
    """A chunked run's graph (``--long-text chunk``): each window's pooled vector, the head's input.
    The window pool and the head, a few thousand numbers, run beside it (:meth:`OnnxSession.chunked`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.m.vectors(self.m.backbone.embed(input_ids), lengths, 0).float()


def window_head(model: nn.Module) -> dict[str, Any]:
    """onnx.json ``window_head``: a chunked run's window pool and class head, as numbers."""
    b = model.backbone
    bias = b.out_head.bias
    query = getattr(b.window_pool, "query", None)
    return {"aggregation": b.window_pool.mode, "query": None if query is None else query.detach().float().tolist(),
            "weight": b.out_head.weight.detach().float().tolist(),
            "bias": None if bias is None else bias.detach().float().tolist()}


def pool_windows(vectors: np.ndarray, counts: np.ndarray, head: dict[str, Any]) -> np.ndarray:
    """:class:`gptclf.models.classifier.WindowPool` and the head in numpy: logits per text."""
    out = np.zeros((len(counts), vectors.shape[1]), dtype=np.float32)
    start = 0
    for i, n in enumerate(counts):
        v = vectors[start: start + n]
        start += n
        if head["aggregation"] == "max":
            out[i] = v.max(0)
        elif head["aggregation"] == "mean":
            out[i] = v.mean(0)
        else:
            score = v @ np.asarray(head["query"], dtype=np.float32)
            w = np.exp(score - score.max())
            out[i] = (w / w.sum()) @ v
    logits = out @ np.asarray(head["weight"], dtype=np.float32).T
    return logits + np.asarray(head["bias"], dtype=np.float32) if head["bias"] is not None else logits


def export_graph(model: nn.Module, path: Path, temperature: float = 1.0, task: tasks.Task = tasks.SINGLE_LABEL
                 ) -> None:
    """Trace ``model`` (a SequenceClassifier) into ``path`` with dynamic batch and sequence axes."""
    chunked = getattr(model, "chunked", False)
    graph = (VectorGraph(model) if chunked else ProbabilityGraph(model, temperature, task)).eval()
    # Two rows of eight tokens: torch.export specialises a dimension seen as 0 or 1.
    ids = torch.zeros((2, 8), dtype=torch.long)
    lens = torch.tensor([8, 5], dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    with warnings.catch_warnings(), torch.no_grad(), _quiet_logs("torch.onnx", "torch.export", "onnxscript"):
        warnings.simplefilter("ignore")  # the exporter's notes on torchvision and axis names
        torch.onnx.export(graph, (ids, lens), str(path), dynamo=True, external_data=True, verbose=False,
                          input_names=["input_ids", "lengths"],
                          output_names=["vectors"] if chunked else ["logits", "probabilities"],
                          dynamic_shapes={"input_ids": {0: batch, 1: seq}, "lengths": {0: batch}})


@contextlib.contextmanager
def _quiet_logs(*names: str) -> Iterator[None]:
    """Only errors from these loggers ('' = the root logger) while the block runs."""
    loggers = [logging.getLogger(n) if n else logging.getLogger() for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def int8_nodes(path: Path, fp32_linears: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The MatMul nodes of the blocks' linears: (to quantize, kept fp32 by ``fp32_linears``).

    Each node's module path comes from the exporter's ``pkg.torch.onnx.name_scopes``
    metadata, e.g. ``['', 'm', 'm.backbone.trf_blocks.3.ff.proj', 'linear_7']``.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    quantize, keep = [], []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        if "aten.linear" not in meta.get("pkg.torch.onnx.fx_node", ""):
            continue  # attention's q@k and p@v: two activations, nothing to quantize offline
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        module = scopes[-2] if len(scopes) >= 2 else ""
        inner = re.search(r"trf_blocks\.\d+\.(.+)$", module)
        if not inner:
            continue
        (keep if inner.group(1).endswith(fp32_linears or ("\0",)) else quantize).append(node.name)
    if not quantize and not keep:
        raise GptclfError(f"{path}: found no linear layers to quantize in the exported graph",
                          hint="this torch version's ONNX exporter names nodes differently; "
                               "use --backend torch and report the torch version")
    return quantize, keep


def quantize_graph(src: Path, dst: Path, fp32_linears: tuple[str, ...]) -> dict[str, Any]:
    """ONNX Runtime dynamic int8 of ``src`` into ``dst``, per output channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes, kept = int8_nodes(src, fp32_linears)
    big = sum(f.stat().st_size for f in src.parent.glob(src.name + "*")) > 1_500_000_000
    with _quiet_logs(""):  # ORT logs its "run pre-processing first" advice on the root logger
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                         use_external_data_format=big, extra_options={"MatMulConstBOnly": True})
    return {"quantized_linears": len(nodes), "fp32_linears": len(kept), "per_channel": True,
            "kept_fp32": list(fp32_linears), "method": "onnxruntime.quantization.quantize_dynamic"}


class OnnxSession:
    """An ONNX Runtime session over one exported graph: ``(ids, lengths) -> probabilities``.

    ``threads`` sets intra-op parallelism (0: ONNX Runtime's default, one per physical
    core); inter-op is 1, since the graph is one chain and a second pool only contends.

    ``per_row`` (the int8 graph): each row runs alone, cut to its own length. Dynamic int8
    quantizes a MatMul's input with one scale over the whole tensor, the other rows and the
    padding included, so in a shared batch one text's scores moved with its neighbours'
    (under a server's mixed load, 383 of 421 requests differed from their lone answers by
    more than 1e-4, up to 0.08). Alone, a text's scale is its own.
    """

    def __init__(self, path: Path, threads: int = 0, head: dict[str, Any] | None = None,
                 per_row: bool = False) -> None:
        require_onnx()
        self.head = head  # a chunked run's window pool and class head (onnx.json window_head)
        self.per_row = per_row
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(int(threads), 0)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not path.is_file():
            raise GptclfError(f"{path} is missing", hint="re-run 'gptclf export --format onnx'")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for a damaged file
            raise GptclfError(f"{path} cannot be loaded by ONNX Runtime ({type(e).__name__}: {e})",
                              hint="the file is truncated or corrupted; export it again") from None
        self.path = path

    def check_outputs(self, num_labels: int, pad_id: int) -> None:
        """Refuse a graph whose probabilities are not ``[batch, num_labels]``: checked on the
        declared shape and on one row of padding, so a mismatch with config.json's labels is
        this error at load, not a failure (or a label broadcast to every other) per request."""
        declared = {o.name: o.shape for o in self.session.get_outputs()}
        if self.head is not None:  # a chunked run's graph gives window vectors; the head runs beside it
            if "vectors" not in declared:
                raise GptclfError(f"{self.path} has no 'vectors' output for this chunked run", hint="export it again")
            return
        if "probabilities" not in declared:
            raise GptclfError(f"{self.path} has no 'probabilities' output", hint="export it again")
        shape = declared["probabilities"]
        got = shape[-1] if isinstance(shape, list) and len(shape) == 2 else None
        if isinstance(got, int) and got != num_labels:
            raise GptclfError(f"{self.path} outputs {got} probabilities per text but config.json has "
                              f"{num_labels} labels", hint="the graph is not this run's; export it again")
        try:
            probe = self(np.array([[pad_id]]), np.array([1]))
        except Exception as e:  # ORT's own exception types: the graph cannot run on its inputs
            raise GptclfError(f"{self.path} fails on one padded row ({type(e).__name__}: {str(e)[:200]})",
                              hint="the graph is not this run's; export it again") from None
        if probe.shape != (1, num_labels):
            raise GptclfError(f"{self.path} outputs shape {list(probe.shape)} for one text, not "
                              f"[1, {num_labels}] (config.json's labels)", hint="the graph is not this run's; "
                              "export it again")

    def __call__(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.run("probabilities", input_ids, lengths)

    def run(self, output: str, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One output of the graph for a batch (row by row, each unpadded, with ``per_row``)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        lens = np.asarray(lengths, dtype=np.int64)
        if self.per_row and len(ids) > 1:
            return np.concatenate([self.run(output, ids[i:i + 1, :max(int(n), 1)], lens[i:i + 1])
                                   for i, n in enumerate(lens)])
        if self.per_row:
            ids = ids[:, :max(int(lens[0]), 1)]  # padding counts in int8's scale too
        feed = {"input_ids": np.ascontiguousarray(ids), "lengths": np.ascontiguousarray(lens)}
        return self.session.run([output], feed)[0]

    def chunked(self, rows: list[list[int]], counts: np.ndarray, pad_id: int, batch_size: int,
                max_tokens: int | None) -> np.ndarray:
        """A chunked run's logits per text (before the temperature): the graph's window vectors in
        length-sorted batches under the token budget, then :func:`pool_windows`."""
        from ..data.batching import collate, sorted_batches

        if self.head is None:
            raise GptclfError(f"{self.path.parent}: onnx.json has no window_head for this chunked run",
                              hint="export it again with this gptclf")
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.zeros((len(rows), len(self.head["weight"][0])), dtype=np.float32)
        for idx in sorted_batches(lengths, batch_size, max_tokens):
            ids, lens = collate([rows[i] for i in idx], pad_id)
            vectors[idx] = self.run("vectors", ids.numpy(), lens.numpy())
        return pool_windows(vectors, counts, self.head)


def manifest(clf: Any) -> dict[str, Any]:
    """onnx.json: everything a non-Python caller needs to turn text into the graph's inputs."""
    cfg = clf.run_config
    return {
        "format": FORMAT,
        "files": dict(FILES),
        "inputs": {"input_ids": "int64 [batch, seq], right-padded with pad_id",
                   "lengths": "int64 [batch], real tokens per row (1..seq)"},
        "outputs": {"logits": "float32 [batch, num_classes], divided by the calibration temperature",
                    "probabilities": "float32 [batch, num_classes], " + clf.task.probability_note()},
        "temperature": float(clf.temperature),
        **clf.task.info_fields(cfg.labels, clf.thresholds),
        "labels": list(cfg.labels),
        "max_length": int(cfg.max_length),
        "pad_id": int(clf.tokenizer.pad_id),
        "padding": cfg.padding,
        "pooling": cfg.pooling,
        "causal_mask": bool(cfg.causal_mask),
        "template": cfg.template,
        "tokenizer": cfg.tokenizer,
        "truncation": "template prefix and suffix kept; the text between them cut to fit max_length",
        "long_text": cfg.long_text,
        "architecture": cfg.architecture.get("arch"),
        "exporter": {"torch": torch.__version__, "api": "torch.onnx.export(dynamo=True)"},
    }


def parity_inputs(clf: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids of mixed lengths, right-padded as prediction pads them."""
    rng = np.random.default_rng(seed)
    width = max(2, min(int(clf.max_length), 48))
    lengths = rng.integers(1, width + 1, size=6)
    lengths[0] = width
    vocab = int(clf.tokenizer.vocab_size)
    ids = rng.integers(0, vocab, size=(6, width))
    for i, n in enumerate(lengths):
        ids[i, n:] = clf.tokenizer.pad_id
    return ids.astype(np.int64), lengths.astype(np.int64)


def check_parity(clf: Any, directory: Path) -> dict[str, Any]:
    """Compare the graphs with the torch model on the same inputs; refuse an fp32 graph that
    disagrees by more than :data:`PARITY_TOLERANCE`."""
    if clf.long_text.chunked:
        return _chunked_parity(clf, directory)
    ids, lens = parity_inputs(clf)
    with torch.inference_mode():
        logits = clf.model(torch.from_numpy(ids), torch.from_numpy(lens)).float()
        ref = clf.task.probabilities(logits / clf.temperature).numpy()
    got = OnnxSession(directory / FILES["fp32"])(ids, lens)
    diff = float(np.abs(got - ref).max())
    if not diff <= PARITY_TOLERANCE:
        raise GptclfError(f"the exported graph's probabilities differ from gptclf's by {diff:.2e} "
                          f"(tolerance {PARITY_TOLERANCE})", hint="use --backend torch; please report this model")
    out: dict[str, Any] = {"fp32_max_abs_diff": diff, "rows": int(len(ids))}
    if (directory / FILES["int8"]).exists():
        q = OnnxSession(directory / FILES["int8"])(ids, lens)
        out["int8_max_abs_diff"] = float(np.abs(q - ref).max())
    return out


def _chunked_parity(clf: Any, directory: Path) -> dict[str, Any]:
    """:func:`check_parity` of a chunked run: six random windows as texts of 2, 1 and 3 windows."""
    from ..data.long_text import Fitted

    ids, lens = parity_inputs(clf)
    rows = [r[:n].tolist() for r, n in zip(ids, lens)]
    fitted = Fitted(rows, np.array([0, 2, 3, 6]), [False] * 3)
    ref = clf.proba_from_ids(fitted)
    out: dict[str, Any] = {"rows": len(rows)}
    for key in ("fp32", "int8"):
        if (directory / FILES[key]).exists():
            session = OnnxSession(directory / FILES[key], head=window_head(clf.model))
            logits = session.chunked(rows, fitted.windows, clf.tokenizer.pad_id, 8, None)
            got = clf.task.probabilities(torch.from_numpy(logits) / clf.temperature).numpy()
            out[f"{key}_max_abs_diff"] = float(np.abs(got - ref).max())
    if not out["fp32_max_abs_diff"] <= PARITY_TOLERANCE:
        raise GptclfError(f"the exported graph's probabilities differ from gptclf's by {out['fp32_max_abs_diff']:.2e} "
                          f"(tolerance {PARITY_TOLERANCE})", hint="use --backend torch; please report this model")
    return out


def write_onnx_dir(clf: Any, out: Path, int8: bool = True, source: Path | None = None) -> Path:
    """Export ``clf`` (a torch-backend Classifier) into the new directory ``out``.

    Written under a temporary name beside ``out`` and renamed into place, so a failed export
    leaves no half-written directory.
    """
    require_onnx()
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptclfError(f"{out} already exists and is not empty", hint="choose another output directory")
    with atomic_directory(out) as tmp:
        _write_files(clf, tmp, int8, source)
    return out


def _write_files(clf: Any, tmp: Path, int8: bool, source: Path | None) -> None:
    model = clf.model.float().eval()
    export_graph(model, tmp / FILES["fp32"], clf.temperature, clf.task)
    info = manifest(clf)
    if clf.long_text.chunked:
        info["window_head"] = window_head(model)
        info["outputs"] = {"vectors": "float32 [windows, dim]: each window's pooled vector; window_head pools a "
                                      "text's windows (long_text) and classifies them, then / temperature"}
    if int8:
        arch = clf.run_config.architecture.get("arch", "gpt2")
        info["int8"] = quantize_graph(tmp / FILES["fp32"], tmp / FILES["int8"],
                                      registry.family(arch).int8_fp32_linears)
    else:
        info["files"].pop("int8")
    info["parity"] = check_parity(clf, tmp)
    if source is not None:
        info["exported_from"] = str(source.resolve())
        if (source / "metrics.json").is_file():  # the run's test accuracy travels with the graphs
            shutil.copy2(source / "metrics.json", tmp / "metrics.json")
    clf.tokenizer.save(tmp)
    write_json_atomic(tmp / "config.json", clf.run_config.to_json())
    write_json_atomic(tmp / MANIFEST, info)


def read_manifest(directory: Path) -> dict[str, Any]:
    info = read_json_object(file_inside(directory, MANIFEST))  # bounded; no link out of the directory
    if info.get("format") != FORMAT:
        raise GptclfError(f"{directory / MANIFEST} is not a gptclf ONNX manifest ({info.get('format')!r})",
                          hint="export it again with 'gptclf export --format onnx'")
    return info


def graph_path(directory: Path, precision: str) -> Path:
    """The graph file of ``precision`` ('fp32' or 'int8') in an exported directory."""
    files = read_manifest(directory).get("files", {})
    if not isinstance(files, dict):
        raise GptclfError(f"{directory / MANIFEST}: 'files' is {type(files).__name__}, not an object "
                          "of graph file names", hint="export it again with 'gptclf export --format onnx'")
    if precision not in files:
        raise GptclfError(f"{directory} has no {precision} ONNX graph",
                          hint="export it again with 'gptclf export --format onnx' (it writes fp32 and int8)")
    name = files[precision]
    if not plain_name(name):
        raise GptclfError(f"{directory / MANIFEST}: the {precision} graph {str(name)[:100]!r} is not a plain "
                          "file name", hint="an ONNX directory's onnx.json may only name files inside it")
    file_inside(directory, name + ".data")  # the graph's external weights, if any, stay inside too
    return file_inside(directory, name)


def cache_path(directory: Path) -> Path:
    """Where the graphs of run ``directory`` are cached for ``--backend onnxruntime``: keyed by
    the run's files (path, size, modification time), this format and the torch version."""
    import hashlib

    from ..data.download import cache_dir

    h = hashlib.sha256(f"{FORMAT}|{torch.__version__}".encode())
    for name in ("config.json", "model.safetensors"):
        f = directory / name
        st = f.stat()
        h.update(f"|{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_dir() / "onnx" / h.hexdigest()[:32]


def cached_export(directory: Path, load_torch: Any) -> Path:
    """The exported directory for run ``directory``, exporting it (fp32 + int8) on first use.

    ``load_torch()`` returns the run's torch-backend Classifier; it is only called on a miss.
    """
    out = cache_path(directory)
    if (out / MANIFEST).is_file():
        return out
    try:
        write_onnx_dir(load_torch(), out, int8=True, source=directory)
    except (GptclfError, OSError):
        if not (out / MANIFEST).is_file():  # not a concurrent exporter that finished first
            raise
    return out

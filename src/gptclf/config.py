"""The two configurations a user meets: the options of a training run, and a run's config.json.

:class:`TrainConfig` holds every option of ``gptclf train``. Each field carries its help
text, choices and group, and the command line is generated from them
(:mod:`gptclf.cli.options`), so an option is declared once. The defaults are the book's
chapter-6 settings, except two that protect data nobody tuned for (docs/accuracy-defaults.md):
the best epoch's weights are saved (``--no-keep-best``) and the scores are calibrated
(``--no-calibrate``); ``trainable`` and ``lr`` left out take the backbone's measured recipe.

:class:`RunConfig` owns ``config.json``, the file that makes a fine-tuned model directory
self-describing: architecture, labels, tokenizer, max length, pad id, pooling, ... Every
reader of a run directory goes through :meth:`RunConfig.from_json`, which checks it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from . import tasks
from .data.long_text import AGGREGATIONS, AUTO_CHUNK_SHARE, DEFAULT_MAX_WINDOWS, DEFAULT_OVERLAP, \
    LONG_TEXT_MODES, LongText
from .data.tables import DEFAULT_LABEL_DELIMITER
from .errors import GptclfError, warn

# The book's chapter-6 recipe; a preset's own recipe (gptclf.models.registry) overrides it.
BOOK_RECIPE: dict[str, Any] = {"trainable": "last_block", "lr": 5e-5, "lr_schedule": "constant", "warmup_ratio": 0.0}
DEFAULT_PATIENCE = 3
POOLINGS = ("last", "last-nonpad", "mean", "first")
TRAINABLE_CHOICES = ("last_layer", "last_block", "last_two_blocks", "all", "lora")
SCHEDULES = ("constant", "cosine", "linear")
STOPPING_METRICS = ("val_loss", "val_accuracy")
REPORT_TO = ("none", "tensorboard", "mlflow")  # experiment trackers (gptclf.training.tracking)
# The default --max-length: min(the backbone's context, this). Longer texts are cut (and
# marked ``truncated``); batches are padded only to their longest text, so the cap costs
# nothing on short texts, and it bounds the memory a single long text can take.
MAX_LENGTH_CAP = 512


def opt(default: Any, help: str, group: str | None = None, *, factory: Any = None, **cli: Any) -> Any:
    """A dataclass field that is also a command-line option: its help, group and, where they
    differ from the defaults, ``choices``, ``flag``, ``metavar`` or ``type`` (see gptclf.cli.options)."""
    metadata = {"help": help, "group": group, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def unescape(s: str) -> str:
    """Let a shell user write newlines and tabs in --template as \\n and \\t."""
    return s.replace("\\n", "\n").replace("\\t", "\t")


MODEL, LORA, DATA, TRAINING = "model", "LoRA (--trainable lora)", "data", "training (defaults: the book's)"
CONTROLS, SPEED, OUTPUT = "training controls (off by default except best-epoch selection and calibration)", "speed", "output"


@dataclass
class TrainConfig:
    """Every option of ``gptclf train``; the defaults are the book's chapter-6 settings (but
    best-epoch selection and calibration, which ``--reference`` turns off)."""

    model: str = opt("gpt2-small", "backbone: gpt2-small|medium|large|xl, smollm2-135m (offline), a local "
                     "Hugging Face directory, a .gguf file, or a hub id", MODEL)
    init: str = opt("pretrained", "pretrained weights, or train from random initialisation", MODEL,
                    choices=("pretrained", "random"))
    trainable: str | None = opt(
        None, "last_layer (head only), last_block (the book), last_two_blocks, all, a number N of last "
        "blocks (with the final norm and the head), or lora (low-rank adapters in every block + final norm "
        "+ head; the book's appendix E). Default: the backbone's recipe (the book's last_block for GPT-2, "
        "the last 4 for smollm2-135m)", MODEL)
    pooling: str | None = opt(
        None, "which position classifies: last real token (default), position -1 (the book's; needs "
        "--padding longest), the mean over real tokens, or the first token (a bonus experiment of the "
        "chapter)", MODEL, choices=POOLINGS)
    template: str | None = opt(
        None, "wrap each text before tokenizing, e.g. 'Message: {text}\\nIs this message spam?' (\\n is a "
        "newline); saved with the model and used at prediction. With last-token pooling the classifier "
        "then reads the question's last token", MODEL, type=unescape)
    causal_mask: bool = opt(True, "let every token attend to the whole text (the chapter's bonus "
                            "experiment); padding stays hidden by a padding mask", MODEL, flag="--no-causal-mask")
    head_bias: bool | None = opt(
        None, "a class head with a bias (--head-bias) or without (--no-head-bias). Default: the family's: "
        "GPT-2 keeps the book's head with a bias (gptclf export --format hf folds it into ln_f); the other families "
        "have none, like their Hugging Face *ForSequenceClassification heads, so every default run exports",
        MODEL, flag="--head-bias", both=True)
    lora_rank: int = opt(16, "rank r of each adapter (the book's 16)", LORA)
    lora_alpha: float = opt(16.0, "scale: the update is B@A*alpha/r", LORA)
    lora_targets: str | None = opt(None, "comma-separated linear layers of each block (default: "
                                   "att.qkv,att.out_proj,ff.fc,ff.proj, i.e. attention and MLP)", LORA)
    lora_dropout: float = opt(0.0, "dropout on the adapters' input", LORA)
    data: str = opt("sms-spam", "'sms-spam' (downloaded, checksum-verified, cached), a CSV/TSV/JSONL/JSON/"
                    "Parquet/Arrow file, or a folder saved by Hugging Face datasets' save_to_disk", DATA)
    val: str | None = opt(None, "your own validation file (else a seeded 10% split)", DATA)
    test: str | None = opt(None, "your own test file (else a seeded 20% split)", DATA)
    text_column: str = opt("text", "the column holding the text", DATA)
    label_column: str = opt("label", "the column holding the label", DATA)
    no_header: bool = opt(False, "the CSV/TSV file(s) have no header row: two columns, label and text in either "
                          "order (the one with few distinct values is the label), like the SMS collection's own "
                          "label<TAB>text. Default: detected (a first row of data, no column name in it)", DATA)
    task: str | None = opt(None, "what a label cell holds: one label (single-label, the chapter's) or a set of "
                           "labels (multi-label, as --multi-label). Default: single-label", DATA,
                           choices=tuple(tasks.TASKS))
    multi_label: bool = opt(False, "each text has a set of labels (zero, one or several): one yes/no output per "
                            "label (sigmoid, binary cross-entropy), per-label thresholds chosen on validation. The "
                            "label column holds a list (JSON/Parquet) or a delimited string (docs/multi-label.md); "
                            "the same as --task multi-label", DATA)
    label_delimiter: str = opt(DEFAULT_LABEL_DELIMITER, "--multi-label: what separates the labels in a string cell ('a|b'); "
                               "a cell written as a list ['a', 'b'] is read as a list", DATA, metavar="SEP")
    balance: str | None = opt(
        None, "undersample every class to the smallest (the book), keep all data, or keep all data and weight "
        "the training loss by inverse class frequency. Default: undersample for the chapter's SMS data, none "
        "(every row) for yours", DATA, choices=("undersample", "none", "weight"))
    split: str | None = opt(
        None, "how the 70/10/20 split is drawn (seeded): within each class, or the book's plain shuffle. "
        "Default: random for the chapter's SMS data (the book's exact split), stratified for yours", DATA,
        choices=("stratified", "random"))
    drop_label_issues: str | None = opt(
        None, "train without the rows that this audit (the audit.csv of 'gptclf audit' on the same --data file) "
        "flags as label issues; the rows dropped are recorded in config.json and the report. An audit of "
        "other rows is refused", DATA, metavar="AUDIT_CSV")
    audit: bool = opt(False, "audit the data first, as gptclf audit does with these data and recipe options and the "
                      "audit options below (written to <out>.audit/), then train without the rows it flags as label "
                      "issues, recorded like --drop-label-issues (pip install 'gptclf[audit]')", DATA)
    max_length: int | None = opt(
        None, "truncate texts to this many tokens, at training and prediction. Default: what the backbone "
        f"supports, capped at {MAX_LENGTH_CAP} (dynamic padding makes a long limit free); with --padding "
        "longest the longest training text (the book)", DATA)
    padding: str | None = opt(None, "pad each batch to its longest text (default) or every text to "
                              "--max-length (the book)", DATA, choices=("dynamic", "longest"))
    long_text: str | None = opt(
        None, "texts longer than --max-length: cut them (truncate), keep their first quarter and last three "
        f"quarters (head-tail), or read them whole in overlapping windows, combined by a learned "
        f"--aggregation (chunk). Default: chunk when more than {AUTO_CHUNK_SHARE:.0%} of the training texts "
        "would be cut, else truncate (docs/long-texts.md)", DATA, choices=LONG_TEXT_MODES)
    stride: int | None = opt(None, "--long-text chunk: tokens consecutive windows share (default: "
                             f"{DEFAULT_OVERLAP:g} of a window's text tokens)", DATA, metavar="N")
    max_windows: int = opt(DEFAULT_MAX_WINDOWS, "--long-text chunk: at most N windows a text (the first N-1 and "
                           "the last; the text is then truncated), so one huge text cannot exhaust memory", DATA,
                           metavar="N")
    aggregation: str = opt("attention", "--long-text chunk: how a text's windows become one vector: a learned "
                           "attention over them, the feature-wise max, or the mean", DATA, choices=AGGREGATIONS)
    context_length: int | None = opt(None, "pad every text to N tokens (= --padding longest --max-length N); "
                                     "1024 is the chapter's 'pad to the full context' experiment for GPT-2", DATA)
    epochs: int = opt(5, "passes over the training split", TRAINING)
    batch_size: int = opt(8, "texts per batch (per process under torchrun)", TRAINING)
    lr: float | None = opt(None, "learning rate (default: the backbone's recipe; the book's 5e-5 for GPT-2, "
                           "2e-4 for smollm2-135m)", TRAINING)
    weight_decay: float = opt(0.1, "AdamW's weight decay", TRAINING)
    eval_freq: int = opt(50, "estimate losses every N steps", TRAINING)
    eval_iter: int = opt(5, "... on this many batches", TRAINING)
    eval_batch_size: int = opt(64, "texts per batch when evaluating", TRAINING)
    seed: int = opt(123, "seed of the split, the head's initialisation and the batch order", TRAINING)
    grad_accum: int = opt(1, "accumulate N batches per optimizer step (effective batch: batch size x N x "
                          "processes; the loss is that of one big batch)", CONTROLS, metavar="N")
    lr_schedule: str | None = opt(None, "after warmup: keep --lr, or decay it to 0 by the last step (default: "
                                  "the backbone's recipe; the book's constant for GPT-2, cosine for smollm2-135m)",
                                  CONTROLS, choices=SCHEDULES)
    warmup_steps: int = opt(0, "raise the lr linearly over this many optimizer steps", CONTROLS)
    warmup_ratio: float | None = opt(None, "... or over this fraction of all optimizer steps (default: the "
                                     "backbone's recipe; 0 for GPT-2, 0.1 for smollm2-135m)", CONTROLS)
    clip_grad_norm: float | None = opt(None, "clip the gradients' global L2 norm to MAX", CONTROLS, metavar="MAX")
    early_stopping_metric: str | None = opt(
        None, "stop when this metric, on the full validation set at each epoch end, has not improved for "
        "--patience epochs; the saved model is the best epoch's", CONTROLS, choices=STOPPING_METRICS)
    patience: int | None = opt(None, "epochs without a gain before early stopping (unset: 3)", CONTROLS)
    keep_best: bool = opt(True, "don't keep the best epoch: save the last epoch's weights, as the book does "
                          "(by default the whole validation set is evaluated at each epoch end and the saved "
                          "weights are the best epoch's: highest validation accuracy, ties broken by the lower "
                          "validation loss)", CONTROLS, flag="--no-keep-best")
    calibrate: bool = opt(True, "don't fit a temperature: keep the raw softmax scores (by default a temperature "
                          "T is fitted on the validation set after training, logits/T, and every prediction "
                          "path applies it; accuracy never changes)", CONTROLS, flag="--no-calibrate")
    checkpoint_every: int = opt(500, "write a checkpoint to <out>.partial/ every N optimizer steps and at each "
                                "epoch end (0: never)", CONTROLS, metavar="N")
    reference: bool = opt(False, "run the book's exact path (pad to longest, position -1, full forward every "
                          "step, no cache) to measure the speed-up honestly", SPEED)
    cache: str = opt("auto", "frozen-trunk cache: compute the frozen blocks once per text", SPEED,
                     choices=("auto", "off", "ram", "disk"))
    cache_max_gb: float | None = opt(None, "RAM budget for the cache before it spills to disk (default: half "
                                     "the free RAM)", SPEED)
    group_by_length: int = opt(4, "sort each group of N shuffled batches by length (0: plain shuffle)", SPEED)
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps", SPEED)
    precision: str = opt("auto", "auto = bf16 autocast on GPUs that support it, else fp32", SPEED,
                         choices=("auto", "fp32", "bf16"))
    compile: bool = opt(False, "torch.compile the model (GPU)", SPEED)
    static_shapes: str = opt(
        "auto", "pad batches to a few fixed widths (multiples of 16 up to 128 tokens, then 192, 256, 384, "
        "512, ...) and replay one CUDA graph per width for the training step and evaluation: the GPU no "
        "longer waits on Python and kernel launches. Results are those of the eager path. auto: on for "
        "CUDA, off elsewhere; on: also on the CPU (same buffers, no graphs); off: the eager path", SPEED,
        choices=("auto", "on", "off"))
    grad_checkpointing: bool = opt(False, "recompute each block's activations in the backward pass: much less "
                                   "memory for --trainable all on large models, about a third more compute", SPEED)
    out: str | None = opt(None, "run directory (default runs/<timestamp>; runs/latest links it)", OUTPUT)
    self_contained: bool = opt(False, "save the whole classifier (the base model's weights too), as a "
                               "directory that loads without the base. By default the run directory stores "
                               "only the tensors training changed and refers to the base model by name and a "
                               "fingerprint of its weights ('gptclf export' makes a self-contained copy later)",
                               OUTPUT)
    progress: bool = opt(True, "no progress bars", OUTPUT, flag="--quiet")
    report_to: str = opt("none", "log the losses, accuracies, learning rate, examples/s, the options and the final "
                         "metrics to TensorBoard or MLflow (MLflow also keeps the run directory as an artifact); "
                         "pip install 'gptclf[tensorboard]' or 'gptclf[mlflow]'", OUTPUT, choices=REPORT_TO)
    tracking_uri: str | None = opt(None, "--report-to mlflow: the tracking URI (default MLFLOW_TRACKING_URI, else "
                                   "./mlruns); tensorboard: the log directory (default tensorboard/<run name> "
                                   "beside the run directory)", OUTPUT, metavar="URI")
    overwrite: bool = opt(False, "discard <out>.partial/, the checkpoints a failed or interrupted run to the "
                          "same --out left, and start again (a finished --out is never overwritten)", OUTPUT)

    def long_text_config(self, mode: str | None = None) -> LongText:
        """:class:`gptclf.data.long_text.LongText` of these options (``mode``: the one chosen, when
        ``--long-text`` was left out)."""
        return LongText(mode or self.long_text or "truncate", self.stride, self.max_windows, self.aggregation)

    def lora_config(self):  # -> peft.lora.LoRAConfig
        from .peft.lora import LoRAConfig, parse_targets

        return LoRAConfig(self.lora_rank, self.lora_alpha, parse_targets(self.lora_targets), self.lora_dropout)

    def resolved(self) -> "TrainConfig":
        """Fill in the backbone's recipe and the choices that depend on ``--reference``; check everything."""
        c = TrainConfig(**asdict(self))
        recipe = recipe_for(c.model)
        if c.reference:  # the book's loop: a constant lr, whatever the backbone's recipe
            recipe.update(lr_schedule=BOOK_RECIPE["lr_schedule"], warmup_ratio=BOOK_RECIPE["warmup_ratio"])
        for name in ("trainable", "lr", "lr_schedule"):
            if getattr(c, name) is None:
                setattr(c, name, recipe[name])
        if c.warmup_ratio is None:  # the recipe's warmup, unless --warmup-steps sets one
            c.warmup_ratio = 0.0 if c.warmup_steps else recipe["warmup_ratio"]
        c._resolve_task()
        from .data.splits import default_balance, default_split

        c.balance = c.balance or tasks.get(c.task).default_balance(default_balance(c.data))
        c.split = c.split or default_split(c.data)
        c._resolve_padding()
        c._check()
        if c.trainable == "lora":
            c.lora_config()  # fail fast on a bad rank/alpha/dropout, before any data is read
        return c

    @property
    def target_task(self) -> tasks.Task:
        """The run's task (:mod:`gptclf.tasks`): ``--task``, else ``--multi-label``'s, else single-label."""
        return tasks.get(self.task or (tasks.MULTI_LABEL.name if self.multi_label else None))

    def _resolve_task(self) -> None:
        """``--multi-label`` is ``--task multi-label``."""
        if self.multi_label and self.task not in (None, tasks.MULTI_LABEL.name):
            raise GptclfError(f"--multi-label contradicts --task {self.task}", hint="give one of them")
        self.task = self.target_task.name
        self.multi_label = self.task == tasks.MULTI_LABEL.name

    def for_backbone(self, arch: str) -> "TrainConfig":
        """The defaults that depend on the loaded backbone's family (``arch``, its config.json name):
        the class head's bias."""
        if self.head_bias is not None:
            return self
        from .models import registry

        return replace(self, head_bias=registry.family(arch).head_bias)

    def max_length_for(self, context_length: int) -> int | None:
        """``--max-length`` for a backbone of ``context_length`` tokens: as given (at most the
        context); with ``--padding longest`` and none given None, the longest training text (the
        book's pad-to length, measured by :func:`gptclf.data.encoding.encode_examples`); else
        min(context, MAX_LENGTH_CAP). Dynamic padding pads each batch to its own longest text, so
        a long limit costs nothing on short texts, and prediction later never cuts a text the
        model could read."""
        if self.max_length is None:
            return None if self.padding == "longest" else min(context_length, MAX_LENGTH_CAP)
        if self.max_length > context_length:
            warn(f"--max-length {self.max_length} is more than the model's context of {context_length} "
                 f"tokens; truncating to {context_length}")
            return context_length
        return self.max_length

    def _resolve_padding(self) -> None:
        if self.reference:
            self.pooling = self.pooling or "last"
            self.padding = self.padding or "longest"
            self.cache = "off"
            self.static_shapes = "off"
            self.group_by_length = 0
            self.eval_batch_size = self.batch_size
            self.keep_best = False  # the book saves the last epoch's weights
            self.calibrate = False
            self.long_text = self.long_text or "truncate"
        if self.context_length is not None:
            if self.context_length < 1:
                raise GptclfError("--context-length must be at least 1")
            if self.padding == "dynamic" or (self.max_length is not None and self.max_length != self.context_length):
                raise GptclfError("--context-length N pads every text to N tokens; it cannot be combined "
                                  "with --padding dynamic or a different --max-length")
            self.padding, self.max_length = "longest", self.context_length
        self.pooling = self.pooling or "last-nonpad"
        self.padding = self.padding or "dynamic"
        if self.pooling == "last" and self.padding == "dynamic":
            raise GptclfError(
                "--pooling last reads position -1, which is padding (and depends on the batch) "
                "under dynamic padding",
                hint="use --pooling last-nonpad (default), or --padding longest for the book's behaviour")

    def _check(self) -> None:
        """Refuse values no run can use, naming the option (choices first, then ranges)."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise GptclfError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, not {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                # Python's float() accepts "inf" and "nan"; --lr inf trained to all-NaN weights.
                raise GptclfError(f"--{f.name.replace('_', '-')} must be a finite number, not {value!r}")
        for name in ("batch_size", "epochs", "eval_freq", "eval_iter", "eval_batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise GptclfError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0:
            raise GptclfError("--lr must be positive")
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio < 1:
            raise GptclfError("--warmup-steps must be >= 0 and --warmup-ratio in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise GptclfError("give --warmup-steps or --warmup-ratio, not both")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise GptclfError("--clip-grad-norm must be positive")
        if self.patience is not None:
            if self.early_stopping_metric is None:
                raise GptclfError("--patience needs --early-stopping-metric val_loss or val_accuracy")
            if self.patience < 1:
                raise GptclfError("--patience must be at least 1")
        if self.checkpoint_every < 0:
            raise GptclfError("--checkpoint-every must be >= 0 (0: no checkpoints)")
        if self.max_length is not None and self.max_length < 1:
            raise GptclfError(f"--max-length must be at least 1 token, not {self.max_length}")
        self.long_text_config().check()
        if self.audit and self.drop_label_issues:
            raise GptclfError("--audit makes its own audit and drops its label issues; --drop-label-issues uses one "
                              "already made: give one of them")
        task = tasks.get(self.task)
        task.check_options(self.balance)
        task.label_reader(self.label_delimiter)  # refuses an empty --label-delimiter where it is used


def recipe_for(model: str) -> dict[str, Any]:
    """The defaults ``gptclf train --model MODEL`` uses for the options it is not given
    (aliases resolve to their preset first: ``smollm2`` gets ``smollm2-135m``'s recipe)."""
    from .models.registry import recipe_for as preset_recipe

    return {**BOOK_RECIPE, **preset_recipe(model)}


# --------------------------------------------------------------------------- config.json

# The temperature a config.json may carry. A fitted one lies in about [0.05, 20]
# (gptclf.training.calibrate); one at 1e-40 turns every logit into inf (each prediction
# fails, an HF export writes non-finite weights), one at 1e40 makes every score uniform.
TEMPERATURE_MIN, TEMPERATURE_MAX = 1e-3, 1e3


@dataclass
class RunConfig:
    """``config.json`` of a fine-tuned model directory (format ``gptclf/1``).

    Keys a newer gptclf may add, or a user's own (``extra``), are kept as they are.
    """

    architecture: dict[str, Any]        # the backbone's config (gptclf.models.registry.config_from_dict)
    labels: list[str]
    tokenizer: dict[str, Any]           # gptclf.tokenizers.tokenizer_from_config
    max_length: int
    pooling: str
    padding: str = "dynamic"
    pad_id: int | None = None
    template: str | None = None
    causal_mask: bool = True
    head_bias: bool = True              # False: Linear(emb_dim, classes, bias=False) (--no-head-bias)
    trainable: str | None = None
    base_model: Any = None              # where the backbone came from (name, hub, file, init)
    lora: dict[str, Any] | None = None  # LoRA runs that saved adapters: rank, alpha, targets, dropout
    weights: str = "full"               # "trained-only": model.safetensors holds what training changed
    base_weights: dict[str, Any] | None = None  # trained-only (LoRA too): the base's name and fingerprint
    data: dict[str, Any] | None = None  # the splits' sizes and class counts
    train: dict[str, Any] | None = None  # the TrainConfig the run used
    gptclf_version: str | None = None
    temperature: float = 1.0            # divides the logits before the softmax (temperature scaling)
    task: str = tasks.DEFAULT_TASK      # gptclf.tasks: what the outputs mean (absent: single-label)
    thresholds: dict[str, float] | None = None  # per label: predicted when p >= its threshold (a task's)
    long_text: dict[str, Any] | None = None  # gptclf.data.long_text.LongText.to_config (absent: truncate)
    extra: dict[str, Any] = field(default_factory=dict)

    FORMAT = "gptclf/1"
    # Written first, in this order; then the rest of the fields, then ``extra``.
    _HEAD = ("format", "architecture", "num_classes", "tokenizer", "gptclf_version", "labels", "max_length",
             "pad_id", "pooling", "padding", "template", "trainable", "base_model", "causal_mask")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def long_text_mode(self) -> LongText:
        """How the run fits long texts (:mod:`gptclf.data.long_text`)."""
        return LongText.from_config(self.long_text)

    @classmethod
    def for_model(cls, backbone: Any, tokenizer: Any, **values: Any) -> "RunConfig":
        """The config of a model about to be saved: its architecture and tokenizer, plus ``values``
        (fields of this class; other keys go to ``extra``)."""
        known = {f.name for f in fields(cls)} - {"extra", "architecture", "tokenizer"}
        return cls(architecture=getattr(backbone, "backbone", backbone).config.to_dict(),
                   tokenizer=tokenizer.to_config(), **{k: v for k, v in values.items() if k in known},
                   extra={k: v for k, v in values.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        values.update(format=self.FORMAT, num_classes=self.num_classes)
        out = {k: values[k] for k in self._HEAD}
        # Written only when they differ from the default, so older config.json files round-trip
        # (no LoRA, a head bias, temperature 1, full weights, single-label).
        defaults = {"lora": None, "head_bias": True, "temperature": 1.0, "weights": "full", "base_weights": None,
                    "task": tasks.DEFAULT_TASK, "thresholds": None, "long_text": None}
        out.update({k: v for k, v in values.items() if k not in out and not (k in defaults and v == defaults[k])})
        out.update(tasks.get(self.task).config_markers())
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_json(cls, d: Any, where: str = "config.json") -> "RunConfig":
        """Check everything a loader relies on, with a message naming the file and the key."""
        if not isinstance(d, dict) or not str(d.get("format", "")).startswith("gptclf/"):
            raise GptclfError(f"{where} is not a gptclf model config",
                              hint="pass the directory written by 'gptclf train'")
        for key in ("architecture", "labels", "tokenizer", "max_length", "pooling"):
            if key not in d:
                raise GptclfError(f"{where} lacks {key!r}")
        labels = d["labels"]
        if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels)
                or len(set(labels)) != len(labels)):
            raise GptclfError(f"{where}: 'labels' must list at least two distinct non-empty strings")
        ml = d["max_length"]
        if isinstance(ml, bool) or not isinstance(ml, int) or ml < 1:
            raise GptclfError(f"{where}: max_length {ml!r} is not a positive integer")
        if d["pooling"] not in POOLINGS:
            raise GptclfError(f"{where}: pooling {d['pooling']!r} is not one of {list(POOLINGS)}")
        if d.get("padding", "dynamic") not in ("dynamic", "longest"):
            raise GptclfError(f"{where}: padding {d.get('padding')!r} is not 'dynamic' or 'longest'")
        for key in ("architecture", "tokenizer"):
            if not isinstance(d[key], dict):
                raise GptclfError(f"{where}: {key!r} must be a JSON object")
        for key in ("causal_mask", "head_bias"):
            if not isinstance(d.get(key, True), bool):
                raise GptclfError(f"{where}: {key!r} must be true or false, not {d[key]!r}")
        t = d.get("temperature", 1.0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not TEMPERATURE_MIN <= t <= TEMPERATURE_MAX:
            raise GptclfError(f"{where}: temperature {t!r} is not a number between {TEMPERATURE_MIN:g} and "
                              f"{TEMPERATURE_MAX:g}", hint="a fitted temperature lies in [0.05, 20]: the run "
                              "directory is damaged or edited; set it to 1.0 or retrain")
        task = tasks.task_of_config(d, labels, where)
        LongText.from_config(d.get("long_text"), where)
        if d.get("lora") is not None and not isinstance(d["lora"], dict):
            raise GptclfError(f"{where}: 'lora' must be a JSON object")
        d = _one_base_spelling(d)
        if d.get("weights", "full") not in ("full", "trained-only"):
            raise GptclfError(f"{where}: weights {d.get('weights')!r} is not 'full' or 'trained-only'")
        if d.get("weights") == "trained-only" and not isinstance(d.get("base_weights"), dict):
            raise GptclfError(f"{where}: trained-only weights need 'base_weights' (the base model's name and "
                              "fingerprint)", hint="the run directory is damaged or edited; retrain it")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs.setdefault("padding", "dynamic")
        kwargs["task"] = task
        markers = tasks.get(task).config_markers()
        extra = {k: v for k, v in d.items() if k not in known and k not in ("format", "num_classes", *markers)}
        return cls(**kwargs, extra=extra)


def _one_base_spelling(d: dict[str, Any]) -> dict[str, Any]:
    """config.json with its base named one way (see :mod:`gptclf.rundir.weights`).

    LoRA directories written before ``base_weights`` named the base of LoRA runs too leave
    ``weights`` out and keep the base in ``lora.base`` (else ``base_model.name``) and
    ``lora.base_fingerprint``. They are read as what they are, trained-only runs on that base,
    so no loader knows the old spelling; ``base_weights`` keys given by hand win."""
    lora = d.get("lora")
    if not lora or d.get("weights", "full") != "full":
        return d
    source = d["base_model"] if isinstance(d.get("base_model"), dict) else {}
    given = d["base_weights"] if isinstance(d.get("base_weights"), dict) else {}
    base = {"name": lora.get("base") or source.get("name"), "fingerprint": lora.get("base_fingerprint"), **given}
    adapters = {k: v for k, v in lora.items() if k not in ("base", "base_fingerprint")}
    return {**d, "weights": "trained-only", "base_weights": base, "lora": adapters}


SEARCH = "search (gptclf tune)"


@dataclass
class TuneOptions:
    """The options ``gptclf tune`` adds to ``gptclf train``'s: the search space and its budget.

    The train options (``--trainable``, ``--lr``, ``--pooling``, ...) describe the default
    recipe, which is always a candidate and is never pruned, so the search never picks a
    recipe worse on validation than the default.
    """

    trainables: str | None = opt(None, "comma-separated --trainable values to try (default: last_layer,1,2,4 "
                                 "blocks, those the backbone has, plus the recipe's; add lora to try adapters)",
                                 SEARCH, metavar="LIST")
    lrs: str | None = opt(None, "comma-separated learning rates to try (default: the recipe's lr and 2.5x it)",
                          SEARCH, metavar="LIST")
    poolings: str | None = opt(None, "comma-separated poolings to try with every depth and lr (default: the "
                               "recipe's; mean is also tried with the recipe's depth and lr)", SEARCH, metavar="LIST")
    long_texts: str | None = opt(None, "comma-separated --long-text values to try with every candidate (default: "
                                 f"truncate,chunk when more than {AUTO_CHUNK_SHARE:.0%} of the training texts are longer "
                                 "than one window, else only the run's own: short texts are not searched)", SEARCH,
                                 metavar="LIST")
    trials: int | None = opt(None, "try at most N candidates (the default recipe first)", SEARCH, metavar="N")
    budget_s: float | None = opt(None, "start no new candidate after this many seconds of search", SEARCH,
                                 metavar="SECONDS")
    prune_epochs: int = opt(2, "through this many epochs, stop a candidate whose validation result at an "
                            "epoch is below the median of the earlier candidates' at that epoch", SEARCH, metavar="N")

    def check(self) -> None:
        if self.trials is not None and self.trials < 1:
            raise GptclfError("--trials must be at least 1")
        if self.budget_s is not None and not self.budget_s > 0:
            raise GptclfError("--budget-s must be positive")
        if self.prune_epochs < 0:
            raise GptclfError("--prune-epochs must be >= 0")


AUDIT = "audit (gptclf audit, gptclf train --audit)"


@dataclass
class AuditOptions:
    """The options ``gptclf audit`` adds to ``gptclf train``'s (whose data and recipe options it
    takes; ``--out`` is the audit's folder): the cross-fitting and the thresholds of each issue."""

    folds: int = opt(5, "cross-fitting folds: each row's probabilities come from a model trained on the "
                     "other folds (stratified, seeded by --seed)", AUDIT, metavar="K")
    audit_epochs: int | None = opt(None, "train each fold for this many epochs (default: --epochs, the run's "
                                   "recipe)", AUDIT, metavar="N")
    similarity: float = opt(0.97, "near-duplicate: two rows whose pooled trunk vectors (centred) have at least "
                            "this cosine similarity", AUDIT, metavar="COS")
    outlier_threshold: float = opt(0.37037, "outlier: a row whose mean distance to its 10 nearest neighbours "
                                   "exceeds Q3 + (1/T - 1) x IQR of all rows' (cleanlab Datalab's rule and "
                                   "default T)", AUDIT, metavar="T")

    def check(self) -> None:
        if self.folds < 2:
            raise GptclfError(f"--folds must be at least 2, not {self.folds}")
        if self.audit_epochs is not None and self.audit_epochs < 1:
            raise GptclfError("--audit-epochs must be at least 1")
        if not 0 < self.similarity <= 1:
            raise GptclfError("--similarity must be in (0, 1]")
        if not 0 < self.outlier_threshold <= 1:
            raise GptclfError("--outlier-threshold must be in (0, 1]")

    @classmethod
    def for_train(cls, audit: bool, given: dict[str, Any]) -> "AuditOptions | None":
        """``gptclf train``'s audit options (``given``: those set): None without ``--audit``, where
        setting one is refused rather than ignored."""
        if given and not audit:
            name = sorted(given)[0].replace("_", "-")
            raise GptclfError(f"--{name} is an audit option: it needs --audit",
                              hint="add --audit, or leave it out")
        return cls(**given) if audit else None

"""Command-line options generated from the config dataclasses, so each option is declared once.

Every dataclass field with help text (``gptclf.config.opt``) becomes an option: ``--name``
(or its ``flag``), typed from the annotation, with its choices and group; a boolean is a
switch (``store_false`` when its default is True, e.g. ``--no-causal-mask``; ``both=True``: a
``--x``/``--no-x`` pair whose default None is resolved later), a list is
repeatable. Defaults stay in the dataclass: the parser records only the options actually
given (argparse's SUPPRESS), which is what ``--resume`` needs to compare them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; ``list[str]`` -> list."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple):
        return list
    return args[0] if args and typing.get_origin(annotation) is not None else annotation


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"].replace("%", "%%")
    if f.default is not dataclasses.MISSING and f.default is not None and not isinstance(f.default, bool):
        text += f" (default: {f.default})"
    return text


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per documented field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue  # not a command-line option
        group = meta.get("group")
        target = groups.setdefault(group, parser.add_argument_group(group)) if group else parser
        kind = _base_type(hints[f.name])
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f)}
        if kind is bool and meta.get("both"):  # --x and --no-x; left out: None, the default resolved later
            kw["action"] = argparse.BooleanOptionalAction
        elif kind is bool:
            kw["action"] = "store_false" if f.default else "store_true"
        elif kind is list:
            kw["action"] = "append"
        else:
            kw["type"] = meta.get("type", kind)
        for key in ("choices", "metavar"):
            if key in meta:
                kw[key] = meta[key]
        target.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), **kw)


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the command line gave, by field name."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def markdown_options(parser: argparse.ArgumentParser, defaults: Any = None) -> str:
    """A sub-command's options as Markdown tables, one per group, in ``--help``'s order and words
    (docs/options.md is generated from this: ``python scripts/options_doc.py``). ``defaults``:
    the dataclass (or a tuple of them) whose fields give the defaults (the parser itself records none)."""
    classes = defaults if isinstance(defaults, tuple) else (defaults,) if defaults else ()
    fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)}
    out = []
    for group in parser._action_groups:  # argparse keeps no public list of its groups
        rows = [_markdown_row(a, fields.get(a.dest)) for a in group._group_actions if a.help != argparse.SUPPRESS
                and a.option_strings and "--help" not in a.option_strings]
        if rows:
            title = "options" if group.title in ("options", "optional arguments") else group.title
            out.append(f"### {title}\n\n| option | default | what it does |\n|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(out) + "\n"


def _markdown_row(action: argparse.Action, field: Any) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings)
    if action.choices:
        names += " " + "\\|".join(f"`{c}`" for c in action.choices)
    default = ""
    if field is not None and field.default is not dataclasses.MISSING and not isinstance(field.default, bool):
        default = "" if field.default is None else f"`{field.default}`"
    text = (action.help or "").replace("%%", "%").replace("|", "\\|").replace("\n", " ")
    text = text.rsplit(" (default: ", 1)[0] if default else text
    return f"| {names} | {default} | {text} |"


ENGINES = ("local", "ray")


def add_engine_options(parser: argparse.ArgumentParser, work: str) -> None:
    """``--engine``, ``--address``, ``--workers`` and ``--gpus-per-worker`` (``gptclf predict``
    and ``gptclf train``; ``work`` says what one worker does). Not TrainConfig fields: where a
    run computes is not one of its training options."""
    g = parser.add_argument_group("on a Ray cluster (pip install 'gptclf[ray]'; docs/scaling.md)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this machine (train: torchrun for several processes); ray: Ray "
                        + ("Data" if work == "predict" else "Train's TorchTrainer"))
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="--engine ray: the cluster to join ('auto': the one this machine belongs to, "
                        "ray://HOST:10001: a remote one); left out: a local Ray instance")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help=f"--engine ray: {work} workers ("
                        + ("Ray actors, each loading the model once" if work == "predict" else
                           "DDP processes: --batch-size is per worker, as under torchrun") + ")")
    g.add_argument("--gpus-per-worker", type=float, default=0, metavar="G",
                   help="--engine ray: GPUs per worker (0: CPU workers)")
    if work == "predict":
        g.add_argument("--cpus-per-worker", type=float, default=1, metavar="C",
                       help="--engine ray: CPUs per worker (its intra-op threads); leave the instance a "
                            "core for reading and writing")
        g.add_argument("--output-format", choices=("parquet", "csv", "jsonl"), default="parquet",
                       help="--engine ray: the format of the files written into the --output directory")

"""The run report: one self-contained ``report.html`` (plots embedded as base64 PNGs) with
the data summary, the settings, the training curves, the metrics of every split and the
test mistakes the model was surest of.

``write_run_report(run_dir)`` builds it from what a run directory already holds
(config.json, metrics.json, loss-plot.png, accuracy-plot.png), so it can be redrawn at any
time; ``write_evaluation_report`` does the same for ``gptclf evaluate --report DIR``.
Every string that came from data or config is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any, Sequence

from .. import tasks
from ..errors import GptclfError
from ..data.long_text import describe_lengths
from ..files import read_json_object, write_json_atomic, write_text_atomic
from .load import read_run_config
from .weights import describe_weights
from .plots import CONFUSION_PNG, RELIABILITY_PNG, plot_confusion_matrix, plot_reliability

REPORT_HTML = "report.html"


# ------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plots img{max-width:48%;margin-right:1%}.text{max-width:560px;white-space:pre-wrap;word-break:break-word}
.muted{color:#666}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return _e(x)


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def kv_table(d: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return _num(v)
        return _e(json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v)

    rows = "".join(f"<tr><th>{_e(k)}</th><td>{cell(v)}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def _report_table(rep: dict[str, Any], task: tasks.Task) -> str:
    """A split's report as its task lays it out (:meth:`gptclf.tasks.base.Task.report_table`),
    then its confusion matrix where the task has one."""
    head, columns, rows, note = task.report_table(rep)
    items = []
    for name, value, fmt in head:
        text = {"pct": lambda v: f"{_num(v * 100, 2)} %", "num": _num}.get(fmt.lstrip("*"), _e)(value)
        items.append(f"{_e(name)} <b>{text}</b>" if fmt.startswith("*") else f"{_e(name)} {text}")
    cells = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" if isinstance(v, str) else
                                     f"<td class=num>{_num(v) if isinstance(v, float) else _e(v)}</td>" for v in row)
                    + "</tr>" for row in rows)
    out = (f"<p>{' &middot; '.join(items)}</p><table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns)
           + f"</tr>{cells}</table>" + (f"<p class=muted>{_e(note)}</p>" if note else ""))
    labels = rep.get("labels", [])
    if rep.get("confusion_matrix"):
        cm_head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{_e(x)}</th>" for x in labels) + "</tr>"
        cm_rows = "".join(f"<tr><th>{_e(lab)}</th>" + "".join(f"<td class=num>{_e(v)}</td>" for v in row) + "</tr>"
                          for lab, row in zip(labels, rep["confusion_matrix"]))
        out += ("<p class=muted>Confusion matrix (rows: true class, columns: predicted)</p>"
                f"<table>{cm_head}{cm_rows}</table>")
    return out


def _mistakes_table(mistakes: list[dict[str, Any]]) -> str:
    if not mistakes:
        return "<p>No mistakes.</p>"
    head = "<tr><th>#</th><th>text</th><th>true</th><th>predicted</th><th>probability</th></tr>"
    rows = "".join(f"<tr><td class=num>{i}</td><td class=text>{_e(m['text'])}</td><td>{_e(m['true'])}</td>"
                   f"<td>{_e(m['predicted'])}</td><td class=num>{_num(float(m['probability']))}</td></tr>"
                   for i, m in enumerate(mistakes, 1))
    return f"<table>{head}{rows}</table>"


def _search_table(rows: list[dict[str, Any]], winner: dict[str, Any] | None) -> str:
    cols = ("trainable", "lr", "pooling", *(("long_text",) if any("long_text" in r for r in rows) else ()),
            "val_accuracy", "val_loss", "best_epoch", "pruned_at_epoch", "seconds")
    head = "<tr><th></th>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>"
    body = "".join(
        "<tr><td>" + ("&#9733;" if winner and all(r.get(k) == v for k, v in winner.items()) else "") + "</td>"
        + "".join(f"<td class=num>{_num(r.get(c)) if r.get(c) is not None else ''}</td>" for c in cols) + "</tr>"
        for r in rows)
    return ("<p class=muted>gptclf tune: every candidate, chosen on the validation split only "
            f"(&#9733; the saved winner)</p><table>{head}{body}</table>")


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: Sequence[str] = ()) -> str:
    """A table of ``rows`` (every cell escaped; numbers right-aligned, ``text_columns`` wrapped)."""
    wide = {i for i, c in enumerate(columns) if c in text_columns}

    def cell(i: int, v: Any) -> str:
        if i in wide:
            return f"<td class=text>{_e(v)}</td>"
        return f"<td class=num>{_num(v)}</td>" if isinstance(v, (int, float)) else f"<td>{_e(v)}</td>"

    head = "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
    return f"<table>{head}" + "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>"
                                      for r in rows) + "</table>"


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A page in the run report's style: ``sections`` are (heading, ready HTML) pairs."""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
            f"<p class=muted>written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"
            + "".join(f"<h2>{_e(h)}</h2>{body}" for h, body in sections) + "</body></html>\n")


def render_report(title: str, *, data_summary: dict[str, Any] | None = None,
                  settings: dict[str, Any] | None = None, headline: dict[str, Any] | None = None,
                  reports: dict[str, dict[str, Any]] | None = None, plots: Sequence[str] = (),
                  mistakes: list[dict[str, Any]] | None = None, mistakes_of: str = "test",
                  search: list[dict[str, Any]] | None = None, search_winner: dict[str, Any] | None = None,
                  task: tasks.Task = tasks.SINGLE_LABEL) -> str:
    """The report page; ``plots`` are ready ``<img>`` tags (already escaped)."""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
             f"<p class=muted>written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"]
    if headline:
        parts.append("<h2>Summary</h2>" + kv_table(headline))
    if data_summary:
        parts.append("<h2>Data</h2>" + kv_table(data_summary))
    if settings:
        parts.append("<h2>Settings</h2>" + kv_table(settings))
    if search:
        parts.append("<h2>Recipe search</h2>" + _search_table(search, search_winner))
    if plots:
        parts.append("<h2>Curves and confusion matrix</h2><div class=plots>" + "".join(plots) + "</div>")
    for name, rep in (reports or {}).items():
        parts.append(f"<h2>Metrics: {_e(name)}</h2>" + _report_table(rep, task))
    if mistakes is not None:
        parts.append(f"<h2>Most confident mistakes ({_e(mistakes_of)})</h2>" + _mistakes_table(mistakes))
    parts.append("</body></html>\n")
    return "".join(parts)


def write_run_report(directory: str | Path, name: str | None = None) -> Path:
    """Draw ``confusion-matrix.png`` and write ``report.html`` for a training run directory
    (``name``: the run's name, when ``directory`` is still its temporary folder)."""
    directory = Path(directory)
    config = read_run_config(directory)
    metrics = read_json_object(directory / "metrics.json")
    test = metrics.get("test_report")
    if test and test.get("confusion_matrix"):
        plot_confusion_matrix(test["confusion_matrix"], test["labels"], directory / CONFUSION_PNG,
                              "Confusion matrix (test)")
    cal = metrics.get("calibration")
    if cal and cal.get("test_reliability_after"):
        plot_reliability(cal["test_reliability_before"], cal["test_reliability_after"], directory / RELIABILITY_PNG,
                         (cal["test_ece_before"], cal["test_ece_after"]), cal["temperature"])
    headline = {k: metrics[k] for k in ("train_accuracy", "val_accuracy", "test_accuracy", "train_micro_f1",
                                        "val_micro_f1", "test_micro_f1", "train_loss", "val_loss", "test_loss",
                                        "best_epoch", "temperature", "thresholds", "seconds", "device", "interrupted")
                if k in metrics}
    task = tasks.get(config.task)
    for old, new in task.headline_names().items():  # a metric the task calls otherwise (exact match)
        headline = {k.replace(old, new): v for k, v in headline.items()}
    if cal:
        headline.update({"test ECE before calibration": cal.get("test_ece_before"),
                         "test ECE after calibration": cal.get("test_ece_after")})
    base = config.base_model
    headline = {"base model": base.get("name") if isinstance(base, dict) else base, "labels": config.labels,
                "max length": config.max_length, **headline}
    if isinstance(metrics.get("weights"), dict):
        headline["model.safetensors"] = describe_weights(metrics["weights"])
    headline.update(_long_text_lines(metrics))
    reports = {name: metrics[f"{key}_report"] for name, key in (("train", "train"), ("validation", "val"),
                                                                ("test", "test"))
               if f"{key}_report" in metrics}
    plots = [_img(directory / "loss-plot.png", "loss curves"), _img(directory / "accuracy-plot.png", "accuracy curves"),
             _img(directory / CONFUSION_PNG, "confusion matrix"), _img(directory / RELIABILITY_PNG, "reliability diagram")]
    page = render_report(f"gptclf run {name or directory.name}", data_summary=config.data,
                         settings=config.train, headline=headline, reports=reports,
                         plots=[p for p in plots if p], mistakes=metrics.get("test_mistakes", []),
                         search=metrics.get("search"), search_winner=metrics.get("search_winner"), task=task)
    out = directory / REPORT_HTML
    write_text_atomic(out, page)
    return out


def _long_text_lines(metrics: dict[str, Any]) -> dict[str, str]:
    """How long texts were read, how many were chunked, and each split's length distribution."""
    lengths = metrics.get("text_lengths")
    if not isinstance(lengths, dict):
        return {}
    out = {"long texts": str(metrics.get("long_text", "truncate"))}
    for key, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        if isinstance(lengths.get(key), dict):
            out[f"text lengths ({name})"] = describe_lengths(name, lengths[key]).split(": ", 1)[1]
    return out


def write_evaluation_report(directory: str | Path, report: dict[str, Any], *, model: str, data: str,
                            task: tasks.Task = tasks.SINGLE_LABEL) -> Path:
    """``gptclf evaluate --report DIR``: metrics.json, confusion-matrix.png and report.html."""
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise GptclfError(f"--report {directory} is a file", hint="pass a directory (it is created if missing)")
    own = [n for n in ("config.json", "model.safetensors") if (directory / n).exists()]
    if own:
        # A run directory's metrics.json, report.html and plots are its training record
        # (and what `gptclf serve` shows under /v1/model): an evaluation never replaces them.
        raise GptclfError(f"--report {directory} is a model directory (it holds {', '.join(own)}); "
                          "the evaluation would overwrite its own metrics.json and report.html",
                          hint=f"pass a new directory, e.g. --report {directory / 'evaluations' / 'NAME'}")
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "metrics.json", report)
    if report.get("confusion_matrix"):  # a report of label sets has none
        plot_confusion_matrix(report["confusion_matrix"], report["labels"], directory / CONFUSION_PNG,
                              "Confusion matrix")
    headline = {"model": model, "data": data, "n": report.get("n"), "accuracy": report.get("accuracy"),
                "loss": report.get("loss")}
    page = render_report(f"gptclf evaluation: {Path(data).name}", headline=headline,
                         reports={"evaluation data": report},
                         plots=[_img(directory / CONFUSION_PNG, "confusion matrix")],
                         mistakes=report.get("mistakes", []), mistakes_of="evaluation data", task=task)
    out = directory / REPORT_HTML
    write_text_atomic(out, page)
    return out

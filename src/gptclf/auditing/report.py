"""What an audit writes: ``audit.csv`` (one line per row, most suspicious first), ``audit.json``
(the files' fingerprints, the options, the counts) and ``report.html``; and its terminal summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..files import write_json_atomic, write_text_atomic
from ..rundir.report import html_page, html_table, kv_table
from .issues import ISSUES, LabelIssues, Matches

AUDIT_CSV, AUDIT_JSON, REPORT_HTML = "audit.csv", "audit.json", "report.html"
COLUMNS = ("row", "text", "label", "suggested_label", "label_quality", "issue", "issues", "flagged_labels",
           "duplicate_of", "similarity", "outlier_score", "file", "split", "fold")
TOP_ROWS = 50


def table(rows: Any, keep: np.ndarray, fold: np.ndarray, li: LabelIssues, matches: Matches,
          ood: np.ndarray, outlier: np.ndarray, delimiter: str) -> Any:
    """The audit as a DataFrame with :data:`COLUMNS`, label issues first (lowest quality first),
    then every other row by its label quality."""
    import pandas as pd

    n = len(rows)
    kept = np.flatnonzero(keep)
    quality, ood_all, sim = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    quality[kept], ood_all[kept] = li.quality, ood
    suggested, flagged_labels, dup_of = [""] * n, [""] * n, [""] * n
    found: list[list[str]] = [[] if keep[i] else ["empty"] for i in range(n)]
    for j, i in enumerate(kept):
        suggested[i], flagged_labels[i] = li.suggested[j], li.flagged_labels[j]
        if li.flagged[j]:
            found[i].append("label")
        if matches.kind[j]:
            found[i].append(matches.kind[j])
            g = kept[matches.of[j]]
            dup_of[i] = str(rows.row[g]) if rows.file[g] == "data" else f"{rows.file[g]}:{rows.row[g]}"
            sim[i] = float(matches.similarity[j])
        if outlier[j]:
            found[i].append("outlier")
    found = [sorted(f, key=ISSUES.index) for f in found]
    df = pd.DataFrame({
        "row": rows.row, "text": [e.text for e in rows.examples],
        "label": [delimiter.join(e.label_set()) for e in rows.examples], "suggested_label": suggested,
        "label_quality": quality, "issue": [f[0] if f else "" for f in found], "issues": [";".join(f) for f in found],
        "flagged_labels": flagged_labels, "duplicate_of": dup_of, "similarity": sim, "outlier_score": ood_all,
        "file": rows.file, "split": rows.split, "fold": [int(k) + 1 if k >= 0 else "" for k in fold]})
    order = np.lexsort((np.arange(n), np.nan_to_num(quality, nan=np.inf), df["issue"].ne("label").to_numpy()))
    return df.iloc[order].reset_index(drop=True)


def counts(df: Any) -> dict[str, int]:
    """How many rows have each issue (a row with several counts in each)."""
    return {name: int(df["issues"].str.split(";").apply(lambda f: name in f).sum()) for name in ISSUES}


def write_audit(out: Path, df: Any, record: dict[str, Any], labels: Sequence[str], multi: bool) -> None:
    """audit.csv, audit.json and report.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / AUDIT_CSV, df.to_csv(index=False))
    write_json_atomic(out / AUDIT_JSON, record)
    write_text_atomic(out / REPORT_HTML, page(df, record, labels, multi))


def page(df: Any, record: dict[str, Any], labels: Sequence[str], multi: bool) -> str:
    top = df[df["issue"] != ""].head(TOP_ROWS)
    cols = ["row", "text", "label", "suggested_label", "label_quality", "issue", "duplicate_of", "split"]
    sections = [
        ("Summary", kv_table({"rows": len(df), **{f"{k} rows": v for k, v in record["counts"].items()},
                              "folds": record["options"]["folds"], "epochs per fold": record["epochs_per_fold"],
                              "seconds": record["seconds"]})),
        ("Files", kv_table({k: json.dumps(v) for k, v in record["files"].items()})),
        (f"Most suspicious rows (the first {TOP_ROWS} with an issue)",
         html_table(cols, [[_cell(r[c]) for c in cols] for _, r in top.iterrows()], text_columns=("text",))),
        ("Given label against suggested label", confusion(df, labels, multi, record["label_delimiter"])),
        ("Folds", html_table(list(record["folds"][0]), [list(f.values()) for f in record["folds"]])
         if record["folds"] else ""),
        ("Settings", kv_table(record["options"]))]
    return html_page("gptclf audit", sections)


def _cell(v: Any) -> Any:
    return "" if isinstance(v, float) and np.isnan(v) else v


def confusion(df: Any, labels: Sequence[str], multi: bool, delimiter: str) -> str:
    """Single-label: rows given each label (rows) by the label the folds suggest (columns).
    Multi-label: per label, how often given and suggested agree."""
    filled = df[df["issue"] != "empty"]
    if not multi:
        cells = [[lab] + [int(((filled["label"] == lab) & (filled["suggested_label"] == s)).sum()) for s in labels]
                 for lab in labels]
        return ("<p class=muted>rows: the given label; columns: the label the out-of-fold model suggests</p>"
                + html_table(["given \\ suggested", *labels], cells))
    given = filled["label"].str.split(delimiter, regex=False).apply(set)
    sugg = filled["suggested_label"].str.split(delimiter, regex=False).apply(set)
    cells = [[lab, int(sum(lab in g and lab in s for g, s in zip(given, sugg))),
              int(sum(lab in g and lab not in s for g, s in zip(given, sugg))),
              int(sum(lab not in g and lab in s for g, s in zip(given, sugg)))] for lab in labels]
    return html_table(["label", "given and suggested", "given, not suggested", "suggested, not given"], cells)


def summary_lines(df: Any, record: dict[str, Any], out: Path | None, top: int = 5) -> list[str]:
    c = record["counts"]
    lines = [f"audit of {len(df)} rows ({record['options']['folds']} folds, {record['epochs_per_fold']} epoch(s) "
             f"each, {record['seconds']:.1f}s): " + ", ".join(f"{v} {k}" for k, v in c.items())]
    for _, r in df[df["issue"] == "label"].head(top).iterrows():
        text = r["text"].replace("\n", " ")
        lines.append(f"  row {r['row']}: {r['label']!r} -> {r['suggested_label']!r} "
                     f"(quality {r['label_quality']:.3f}): {text[:70] + ('...' if len(text) > 70 else '')}")
    if out is not None:
        lines.append(f"wrote {out / AUDIT_CSV} and {out / REPORT_HTML}")
    return lines

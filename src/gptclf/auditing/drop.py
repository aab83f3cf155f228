"""``gptclf train --drop-label-issues DIR/audit.csv``: the rows of ``--data`` an audit flags as
label issues, refused unless the audit was of these very rows (same count, same texts in the
same order: the fingerprint audit.json records). No pandas: training does not need the extra."""

from __future__ import annotations

import csv
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import AuditOptions
from ..data.tables import Example
from ..errors import GptclfError
from ..files import read_json_object
from .report import AUDIT_JSON
from .rows import texts_sha256

AUDIT_FIELDS = tuple(f.name for f in fields(AuditOptions))  # what config.json records of the audit's settings


AUDIT_SUFFIX = ".audit"  # gptclf train --audit writes its audit beside the run: <out>.audit/


def audit_dir(out: str | Path) -> Path:
    """Where ``gptclf train --audit --out OUT`` keeps its audit: ``OUT.audit/``."""
    out = Path(out)
    return out.with_name(out.name + AUDIT_SUFFIX)


def drop_label_issues(audit_csv: str, examples: list[Example], source: str,
                      by_train: bool = False) -> tuple[list[Example], dict[str, Any]]:
    """``examples`` (every row of the data file, as read) without the rows the audit flags as label
    issues, and the record of what was dropped and why (config.json's ``data.dropped_by_audit``).
    ``by_train``: the audit is the one ``gptclf train --audit`` made first."""
    path = Path(audit_csv).expanduser()
    meta = path.parent / AUDIT_JSON
    if not path.is_file() or not meta.is_file():
        if by_train:
            raise GptclfError(f"--audit: the run's audit {path.parent} is missing (need audit.csv and audit.json)",
                              hint="start the run again (--overwrite discards its checkpoints)")
        raise GptclfError(f"--drop-label-issues {audit_csv}: no audit there (need audit.csv and audit.json)",
                          hint="run gptclf audit --data <your file> --out DIR first, then pass DIR/audit.csv")
    record = read_json_object(meta)
    audited = record.get("files", {}).get("data", {})
    n, digest = len(examples), texts_sha256(examples)
    if audited.get("rows") != n or audited.get("sha256") != digest:
        raise GptclfError(f"--drop-label-issues {audit_csv} is an audit of other rows: {audited.get('path')} "
                          f"({audited.get('rows')} rows) does not match {source} ({n} rows, other texts)"
                          if audited.get("rows") == n else
                          f"--drop-label-issues {audit_csv} is an audit of other rows: {audited.get('path')} had "
                          f"{audited.get('rows')} rows, {source} has {n}",
                          hint="audit this --data file (gptclf audit) and pass that audit.csv")
    flagged = _flagged_rows(path, n)
    kept = [e for i, e in enumerate(examples) if i not in flagged]
    per_label = Counter("|".join(examples[i].label_set()) for i in flagged)
    options = record.get("options", {})
    return kept, {"audit": str(path), "reason": "label issue (cleanlab on out-of-fold probabilities)",
                  "n_rows": len(flagged), "rows": sorted(flagged), "given_labels": dict(sorted(per_label.items())),
                  "audited_by": "gptclf train --audit" if by_train else "gptclf audit",
                  "audit_options": {k: options[k] for k in AUDIT_FIELDS if k in options}}


def _flagged_rows(path: Path, n: int) -> set[int]:
    """The data file's rows whose issue is ``label``."""
    csv.field_size_limit(sys.maxsize)
    flagged: set[int] = set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"row", "issue", "file"} - set(reader.fieldnames or [])
        if missing:
            raise GptclfError(f"{path}: not an audit.csv (no column {sorted(missing)[0]!r})",
                              hint="pass the audit.csv that gptclf audit wrote")
        for line, r in enumerate(reader, 2):
            if r["issue"] != "label" or r["file"] != "data":
                continue
            if not r["row"].isdigit() or int(r["row"]) >= n:
                raise GptclfError(f"{path}, line {line}: row {r['row']!r} is not a row of the data",
                                  hint="pass the audit.csv that gptclf audit wrote, unedited")
            flagged.add(int(r["row"]))
    return flagged

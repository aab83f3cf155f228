"""The chapter's data set: the SMS Spam Collection (Almeida & Gómez Hidalgo, CC BY 4.0).

:func:`download_sms_spam` is the book's ``download_and_unzip_spam_data``: it fetches the
UCI zip (or the book's mirror), checks its sha256 and keeps the file in gptclf's cache;
:func:`read_sms_spam` reads its ``label<TAB>text`` lines.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from ..errors import GptclfError, warn
from .download import cache_dir, checksum_error, extract_member, fetch, sha256_file
from .tables import Example
from .text import decode_text, split_lines

SMS_SPAM_URLS = (
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    # The book's backup mirror, for when the UCI host is down.
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
)
SMS_SPAM_FILE = "SMSSpamCollection"
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_SPAM_NAMES = ("sms-spam", "sms_spam", "smsspam", "sms-spam-collection")



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
                fetch(url, zpath)
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
        raise checksum_error(src, digest, expected_sha256)
    return src


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


def is_sms_spam_file(path: Path) -> bool:
    try:
        if zipfile.is_zipfile(path):
            return False
        return path.stat().st_size == 477_907 and sha256_file(path) == SMS_SPAM_SHA256
    except OSError:
        return False




def is_sms_spam(data: str) -> bool:
    """Whether ``--data`` names the SMS Spam Collection (its name, the file or the UCI zip)."""
    if data.lower() in SMS_SPAM_NAMES:
        return True
    path = Path(data).expanduser()
    return is_sms_spam_file(path) or (path.is_file() and zipfile.is_zipfile(path))


def load_sms_spam(data: str = "sms-spam") -> tuple[list[Example], str]:
    """The collection's messages and a description of where they came from."""
    if data.lower() in SMS_SPAM_NAMES:
        path = download_sms_spam()
        return read_sms_spam(path), f"sms-spam ({path})"
    given = Path(data).expanduser()
    path = given
    if zipfile.is_zipfile(given):
        path = _verified_sms_file(given, SMS_SPAM_SHA256, cache_dir() / "sms_spam_collection")
    return read_sms_spam(path), f"sms-spam ({given})"

"""Downloads that a user can trust: a cache folder, sha256 checks, and zip members
extracted without letting the archive choose where anything is written."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
import zlib
from pathlib import Path

from ..errors import GptclfError
from ..files import atomic_path


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


def fetch(url: str, dest: Path, timeout: float = 30.0) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "gptclf"})
    with urllib.request.urlopen(req, timeout=timeout) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def checksum_error(src: Path, digest: str, expected: str) -> GptclfError:
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
    try:
        with zipfile.ZipFile(zip_path) as zf, atomic_path(dest) as tmp:
            infos = [i for i in zf.infolist()
                     if i.filename.replace("\\", "/").rsplit("/", 1)[-1] == member and not i.is_dir()]
            if not infos:
                raise GptclfError(f"{zip_path} has no member {member!r}")
            digest = _copy_bounded(zf, infos[0], tmp, max_bytes, zip_path)
            if expected_sha256 is not None and digest != expected_sha256:
                raise checksum_error(zip_path, digest, expected_sha256)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, zlib.error) as e:
        raise GptclfError(f"{zip_path} is not a readable zip archive ({type(e).__name__}: {e})",
                          hint="the download is truncated or corrupted; delete it and retry") from None


def _copy_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, max_bytes: int, zip_path: Path) -> str:
    """Copy one member to ``dest``, stopping at ``max_bytes`` (a zip bomb); return its sha256."""
    h = hashlib.sha256()
    n = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            n += len(chunk)
            if n > max_bytes:
                raise GptclfError(f"{zip_path}: member {info.filename!r} is larger than "
                                  f"{max_bytes >> 20} MB", hint="this is not the expected archive")
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()

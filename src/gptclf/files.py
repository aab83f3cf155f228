"""Crash-safe files: every file gptclf writes appears whole or not at all.

:func:`atomic_path` is the one way gptclf writes a file: into a temporary name beside the
target (``.<name>.tmp-<pid>...``), flushed to disk, then renamed over the target. A
crash, a kill or an exception at any moment leaves the old file (or none), never half a
new one; the temporaries of writers that died are removed by the next writer.
:func:`read_json_object` reads the JSON files gptclf keeps, with a size bound.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import stat
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from .errors import GptclfError

# config.json, metrics.json, ... of a run are kilobytes; a file that claims more is not one
# of ours (or is /dev/zero behind a symlink), and reading it whole would exhaust memory.
MAX_JSON_BYTES = 64 << 20


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk before it is renamed into place."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def temporary_name(path: Path, suffix: str = "") -> Path:
    """The temporary beside ``path`` that this process writes (the pid tells dead writers apart)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>...`` files and directories whose writer process is gone."""
    prefix = f".{path.name}.tmp-"
    for p in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = p.name[len(prefix):].split("-", 1)[0].split(".", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Write to the yielded temporary path; on success it replaces ``path`` (keeping the mode of
    the file it replaces), on any error it is removed and ``path`` is untouched."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(out: str | Path, replace: bool = False) -> Iterator[Path]:
    """Fill the yielded temporary directory; on success it becomes ``out`` (which must be
    absent or empty, or with ``replace`` an existing directory, swapped by two renames), every
    file flushed to disk first; on any error it is removed and ``out`` is untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    # The pid in the name lets a later writer tell a dead writer's leftovers from a live one's.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a model directory is not a secret
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                fsync_path(f)
        fsync_path(tmp)
        if replace and out.exists() and any(out.iterdir()):
            # Two renames: for a moment there is no `out`, but never a half-written one.
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)  # keep the previous directory rather than nothing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.exists():
                out.rmdir()  # empty: the callers refuse a non-empty one first
            os.replace(tmp, out)
        fsync_path(out.parent)  # the rename itself survives a power cut
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def lock_file(path: Path) -> int | None:
    """Take ``path`` (created if absent) as an exclusive lock; its descriptor, or None when
    another process holds it. flock: the kernel releases it when the holder dies, so a killed
    run leaves no stale lock; the holder's pid is written into the file for the message."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (the directory checks still refuse a finished run)
        return os.open(os.devnull, os.O_RDONLY)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else its holder unlinked it between our open and lock: take the new file
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def lock_holder(path: Path) -> str:
    """The pid written by :func:`lock_file`'s holder ('?' when unreadable)."""
    try:
        return path.read_text(encoding="ascii", errors="replace")[:20].strip() or "?"
    except OSError:
        return "?"


def unlock_file(fd: int, path: Path) -> None:
    """Release :func:`lock_file`'s lock and remove the file (a later locker re-creates it)."""
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path``, read with a size bound; a clear error for anything else."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise GptclfError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > limit:
        raise GptclfError(f"{path} is larger than {limit >> 20} MB, which no gptclf JSON file is",
                          hint="the file is damaged or not gptclf's")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5,000-digit numbers, [[[[...
        raise GptclfError(f"{path} is not valid JSON: {type(e).__name__}: {str(e)[:200]}") from None


def read_json_object(path: Path, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    obj = read_json(path, limit)
    if not isinstance(obj, dict):
        raise GptclfError(f"{path} is not a JSON object")
    return obj


def plain_name(name: Any) -> bool:
    """Whether ``name`` is a bare file name: no folder part, no ``..``, not absolute. A model
    directory's JSON files come with the model, possibly from someone else, and may only
    name files inside the directory."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and not Path(name).is_absolute())


def _link_root(directory: Path) -> Path:
    """Where links out of ``directory`` may point: the directory itself, or for a snapshot of
    the Hugging Face cache (``models--org--name/snapshots/<rev>``, whose files are links to
    ``../../blobs/``) the cached repository's folder."""
    if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith(("models--", "datasets--")):
        return directory.parent.parent
    return directory


def file_inside(directory: Path, name: str) -> Path:
    """``directory / name``, refused when it is a link (or under one) that resolves outside
    ``directory``: a model directory may come from someone else, and its files must not
    make gptclf read ``/dev/zero``, ``~/.ssh/...`` or another user's data."""
    path = Path(directory) / name
    if not os.path.lexists(path):
        return path  # the caller says what is missing
    root = _link_root(Path(directory).resolve())
    target = path.resolve()
    if target != root and root not in target.parents:
        raise GptclfError(f"{path} is a link to {target}, outside the model directory {root}",
                          hint="copy the file into the directory instead of linking it")
    if not target.is_file():
        raise GptclfError(f"{path} is not a regular file", hint="the model directory is damaged")
    return path

"""Downloads and zips: no member escapes the target, bombs and corrupt zips are refused, caches survive."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest

from gptclf.data import download, sms_spam
from gptclf.errors import DataWarning, GptclfError


def _zip_with(path: Path, entries: list[tuple[str, bytes, bool]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload, symlink in entries:
            info = zipfile.ZipInfo(name)
            if symlink:
                info.create_system = 3
                info.external_attr = (0o120777 << 16)  # S_IFLNK: the payload is the link target
            zf.writestr(info, payload)
    return path


def test_zip_members_cannot_write_outside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "sms"
    target.mkdir(parents=True)
    dest = target / sms_spam.SMS_SPAM_FILE
    outside = tmp_path / "outside"
    for entries in (
        [("../../outside/SMSSpamCollection", b"ham\thi\n", False)],
        [(f"{outside}/SMSSpamCollection", b"ham\thi\n", False)],
        [("/etc/SMSSpamCollection", b"ham\thi\n", False)],
        [("SMSSpamCollection", str(outside / "x").encode(), True)],
        [("..\\..\\SMSSpamCollection", b"ham\thi\n", False)],
    ):
        z = _zip_with(tmp_path / "evil.zip", entries)
        download.extract_member(z, sms_spam.SMS_SPAM_FILE, dest)
        assert dest.is_file() and not dest.is_symlink()
        assert dest.read_bytes() == entries[0][1]  # the bytes, wherever the archive says they go
        assert not outside.exists() and not Path("/etc/SMSSpamCollection").exists()
        assert sorted(p.name for p in target.iterdir()) == [sms_spam.SMS_SPAM_FILE]
        # With the checksum on, none of these is accepted, and the good copy stays.
        dest.write_bytes(b"good copy")
        with pytest.raises(GptclfError, match="checksum mismatch"):
            download.extract_member(z, sms_spam.SMS_SPAM_FILE, dest, expected_sha256=sms_spam.SMS_SPAM_SHA256)
        assert dest.read_bytes() == b"good copy"
        assert sorted(p.name for p in target.iterdir()) == [sms_spam.SMS_SPAM_FILE]


def test_zip_bomb_and_corrupt_zip_are_refused(tmp_path: Path) -> None:
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(sms_spam.SMS_SPAM_FILE, b"\0" * (3 << 20))  # compresses to a few KB
    assert z.stat().st_size < 50_000
    dest = tmp_path / "out"
    with pytest.raises(GptclfError, match="larger than 1 MB"):
        download.extract_member(z, sms_spam.SMS_SPAM_FILE, dest, max_bytes=1 << 20)
    assert list(tmp_path.iterdir()) == [z]
    raw = bytearray(z.read_bytes())
    raw[40:60] = b"\xff" * 20  # inside the compressed stream
    z.write_bytes(bytes(raw))
    with pytest.raises(GptclfError, match="is not a readable zip archive|has no member"):
        download.extract_member(z, sms_spam.SMS_SPAM_FILE, dest)
    assert list(tmp_path.iterdir()) == [z]


def test_bad_download_does_not_replace_the_cached_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPTCLF_SMS_SPAM", raising=False)
    z = _zip_with(tmp_path / "mirror.zip", [(sms_spam.SMS_SPAM_FILE, b"ham\ttampered\n", False)])
    cached = tmp_path / "c" / "sms_spam_collection" / sms_spam.SMS_SPAM_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stale but not replaced by bad bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # "failed its checksum; downloading it again"
        with pytest.raises(GptclfError, match="checksum mismatch"):
            sms_spam.download_sms_spam(tmp_path / "c", urls=[z.as_uri()])
    assert cached.read_bytes() == b"stale but not replaced by bad bytes"
    assert sorted(p.name for p in cached.parent.iterdir()) == [sms_spam.SMS_SPAM_FILE]

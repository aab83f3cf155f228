"""A SIGKILLed ``gptclf train --cache disk`` (or ``tune``) cannot remove its trunk-cache spill;
the spill's name carries the host and the pid, and the next process to build a trunk cache
removes the spills of this host's dead processes, never a live one's or another host's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gptclf.training.trunk_cache import clean_stale_spills, spill_prefix

from helpers import cli, env_with, sms_head_csv, train_args, write_gpt2_config_only


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_only_this_hosts_dead_processes_spills_are_removed(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / (spill_prefix(_dead_pid()) + "abc")
        keep = [tmp_path / (spill_prefix(live.pid) + "def"),          # a live process's
                tmp_path / (spill_prefix() + "ghi"),                  # this process's
                tmp_path / f"cache-otherhost-{_dead_pid()}-jkl",      # another machine's
                tmp_path / "cache-xyz123"]                            # an old unnamed one: unknown owner
        for d in [dead, *keep]:
            d.mkdir()
            (d / "trunk.npy").write_bytes(b"\0" * 128)
        assert clean_stale_spills(tmp_path) == [dead]
        assert not dead.exists() and all(d.exists() for d in keep)
    finally:
        live.kill()
        live.wait()


def test_a_sigkilled_trains_spill_is_removed_at_the_next_start(tmp_path: Path, sms_file: Path, capsys,
                                                               monkeypatch) -> None:
    model = write_gpt2_config_only(tmp_path / "m")  # 2 blocks: the default trains the last, caches the first
    data = sms_head_csv(sms_file, tmp_path / "d.csv", 300)
    cache = tmp_path / "cache"
    spills = cache / "trunk"
    args = train_args(model, data, tmp_path / "killed", "--cache", "disk", "--epochs", "500")
    args.remove("--quiet")  # its log says when the cache is built
    p = subprocess.Popen([sys.executable, "-m", "gptclf", *args], stderr=subprocess.PIPE, text=True,
                         env=env_with(GPTCLF_CACHE_DIR=str(cache)))
    try:
        deadline = time.monotonic() + 240
        for line in p.stderr:  # type: ignore[union-attr]
            if "cached the" in line or time.monotonic() > deadline:
                break
        assert "cached the" in line and "(disk)" in line, line
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    left = list(spills.iterdir())
    # What a SIGKILL leaves: one spill per split, each named after the killed process.
    assert len(left) == 3 and all(d.name.startswith(spill_prefix(p.pid)) for d in left), left
    monkeypatch.setenv("GPTCLF_CACHE_DIR", str(cache))  # the next train, in this process
    code, _, err = cli(capsys, *train_args(model, data, tmp_path / "next", "--cache", "disk"))
    assert code == 0, err
    assert list(spills.iterdir()) == []  # the killed run's spill gone, the next run's own removed at its end

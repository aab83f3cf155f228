"""The free-memory check before a model is built honours the process's own limit, not only the
host's MemAvailable: the headroom under its cgroup's memory limit (v2 memory.max, v1
memory.limit_in_bytes, a parent's included) and under RLIMIT_AS. In a container below host
memory an oversized config is then a message, not an OOM kill. The cgroup files are fakes the
reader is pointed at; RLIMIT_AS is set for real in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gptclf import device
from gptclf.errors import GptclfError
from gptclf.models import registry
from gptclf.models.gpt2 import GPT2Config

MiB = 1 << 20


def _v2(tmp_path: Path, levels: dict[str, tuple[str, int]], inactive: int = 0) -> tuple[Path, Path]:
    """A fake cgroup v2 tree: {relative folder: (memory.max, memory.current)}; the process in the deepest."""
    root = tmp_path / "cgroup"
    for rel, (limit, current) in levels.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(limit + "\n")
        (d / "memory.current").write_text(f"{current}\n")
        (d / "memory.stat").write_text(f"anon 1\ninactive_file {inactive}\nactive_file 7\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::/{max(levels, key=len)}\n")
    return proc, root


def test_v2_headroom_is_the_limit_less_usage_less_reclaimable_cache(tmp_path: Path) -> None:
    proc, root = _v2(tmp_path, {"app.slice/job": (str(1024 * MiB), 300 * MiB)}, inactive=100 * MiB)
    assert device.cgroup_headroom(proc, root) == (1024 - 300 + 100) * MiB


def test_v2_a_parents_tighter_limit_binds(tmp_path: Path) -> None:
    proc, root = _v2(tmp_path, {"app.slice": (str(512 * MiB), 400 * MiB),
                                "app.slice/job": (str(1024 * MiB), 300 * MiB)})
    assert device.cgroup_headroom(proc, root) == 112 * MiB


def test_v2_max_means_no_limit(tmp_path: Path) -> None:
    proc, root = _v2(tmp_path, {"job": ("max", 300 * MiB)})
    assert device.cgroup_headroom(proc, root) is None


def test_v1_limit_at_the_container_root(tmp_path: Path) -> None:
    # In a container the v1 path names the host's folder; the limit is at the mount's root.
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{256 * MiB}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{56 * MiB}\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert device.cgroup_headroom(proc, root) == 200 * MiB
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert device.cgroup_headroom(proc, root) is None


def test_available_ram_is_the_least_of_the_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc, root = _v2(tmp_path, {"job": (str(64 * MiB), 0)})
    host = device.available_ram()
    assert host > 64 * MiB
    monkeypatch.setattr(device, "PROC_CGROUP", proc)
    monkeypatch.setattr(device, "CGROUP_ROOT", root)
    assert device.available_ram() == 64 * MiB
    # A GPT-2 of ~100 MiB of fp32 weights: more than the cgroup leaves, refused before allocating.
    cfg = GPT2Config(vocab_size=50257, context_length=128, emb_dim=512, n_heads=8, n_layers=1)
    with pytest.raises(GptclfError, match=r"more than the 0\.1 GiB of free memory"):
        registry.build_model(cfg)


# Import torch first (its own mappings), then cap the address space 768 MiB above what is mapped,
# then build a model of ~1.2 GiB: refused with the message, not a MemoryError traceback.
_UNDER_RLIMIT = """
import resource
from gptclf.errors import GptclfError
from gptclf.models import registry
from gptclf.models.gpt2 import GPT2Config
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (768 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    registry.build_model(GPT2Config(vocab_size=50257, context_length=128, emb_dim=1024, n_heads=16, n_layers=20))
    print("built")
except GptclfError as e:
    print("refused:", e.message)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_rlimit_as_is_honoured_in_a_child_process() -> None:
    p = subprocess.run([sys.executable, "-c", _UNDER_RLIMIT], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-1500:]
    assert p.stdout.startswith("refused:") and "GiB of free memory" in p.stdout, p.stdout

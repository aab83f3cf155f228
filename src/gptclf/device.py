"""Where the work runs: device and precision choices, and how much memory there is."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .errors import GptclfError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GptclfError(f"unknown device {name!r}", hint="use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GptclfError("--device cuda: no CUDA GPU is available", hint="use --device auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise GptclfError("--device mps: MPS is not available", hint="use --device auto or cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 autocast on GPUs that support it, fp32 elsewhere."""
    if precision not in ("auto", "fp32", "bf16"):
        raise GptclfError(f"--precision must be auto, fp32 or bf16, not {precision!r}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    return precision


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        # TF32 matmuls: ~free speed for the fp32 parts (optimizer maths, norms).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def pad_multiple(device: torch.device) -> int:
    """Round each dynamically padded batch up to a multiple of this many tokens.

    On a GPU every new sequence length is a new set of kernel shapes, and the first batch
    of each shape pays for kernel selection: with ~100 distinct lengths the first epoch
    of the chapter-6 job ran at a tenth of its later speed. Multiples of 16 leave ~8
    shapes for the same data. The CPU has no such cost, and padding is pure waste there.
    Results do not depend on it: padding is masked and pooling reads real tokens only.
    ``GPTCLF_PAD_MULTIPLE`` overrides it (1 turns it off), for measuring.
    """
    env = os.environ.get("GPTCLF_PAD_MULTIPLE")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise GptclfError(f"GPTCLF_PAD_MULTIPLE={env!r}: give a whole number of tokens (1: off)") from None
        if value < 1:
            raise GptclfError(f"GPTCLF_PAD_MULTIPLE={env!r} must be at least 1")
        return value
    return 16 if device.type == "cuda" else 1


def autocast(device: torch.device, precision: str, cache: bool = True):
    """bf16 autocast for ``precision == 'bf16'``; ``cache=False`` for a CUDA graph capture
    (gptclf.graphs), which must record the weights' casts rather than reuse cached ones."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


# Where the limits are read; tests point these at fake files.
MEMINFO = Path("/proc/meminfo")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as a page-rounded 2^63 - 1; anything this large is no limit.
_NO_LIMIT = 1 << 60


def available_ram() -> int:
    """Bytes a new allocation of this process can get: the least of the host's MemAvailable,
    the headroom under its cgroup's memory limit (v2 memory.max, v1 limit_in_bytes: in a
    container below host memory the OOM killer acts there) and under RLIMIT_AS."""
    return min(x for x in (host_available(), cgroup_headroom(), rlimit_headroom()) if x is not None)


def host_available(meminfo: Path | None = None) -> int:
    """The kernel's MemAvailable (what the page cache can give back included)."""
    try:
        with open(meminfo or MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2's no limit) or garbage: no limit known


def _inactive_file(stat: Path, key: str) -> int:
    """Page cache the kernel reclaims before it kills: counted in usage, yet free to us."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _cgroup_dirs(proc_cgroup: Path, root: Path) -> list[tuple[Path, str, str, str]]:
    """(folder, limit file, usage file, memory.stat key) of this process's memory cgroup and
    each of its ancestors (a limit set on a parent binds too): v2's unified line ``0::/path``,
    v1's ``N:...memory...:/path``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in parts[1].split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        rel = Path(parts[2].lstrip("/"))
        # In a container the path is the host's and its folder is mounted as the root: try both.
        for d in [base / rel, *[base / p for p in rel.parents]]:
            out.append((d, *files))
    return out


def cgroup_headroom(proc_cgroup: Path | None = None, root: Path | None = None) -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroups (None: no limit)."""
    best = None
    for d, limit_file, usage_file, stat_key in _cgroup_dirs(proc_cgroup or PROC_CGROUP, root or CGROUP_ROOT):
        limit = _read_int(d / limit_file)
        if limit is None or limit >= _NO_LIMIT:
            continue
        usage = (_read_int(d / usage_file) or 0) - _inactive_file(d / "memory.stat", stat_key)
        room = max(0, limit - max(0, usage))
        best = room if best is None else min(best, room)
    return best


def rlimit_headroom(status: Path = Path("/proc/self/status")) -> int | None:
    """Address space left under RLIMIT_AS (ulimit -v): its limit less what the process maps."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        vm = next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines()
                  if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError, IndexError):
        vm = 0
    return max(0, soft - vm)

"""Run directories, environment capture and atomic writes.

A run lives in ``runs/<utc-time>_<protocol>_<method>_s<seed>/`` and is never overwritten:
``config.json`` (resolved config + hashes), ``environment.json``, ``train_log.jsonl``,
``checkpoint_last.pt``, ``metrics.json`` (schema-versioned), ``ranks.json`` (per-query ranks).
Every file is written atomically (:mod:`psbench.files.atomic`): temporary name in the same directory, fsync,
the umask's mode, rename.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from psbench.ops import linear as cpu_linear
from psbench.ops.prefilter import bf16_matmul_is_fast

METRICS_SCHEMA_VERSION = 1


class RunDirError(RuntimeError):
    """The runs directory cannot be used (exists, not writable, out of space)."""


def run_dir_name(protocol: str, method: str, seed: int, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S_%fZ")
    return f"{stamp}_{protocol}_{method}_s{seed}"


def create_run_dir(runs_dir: Path, protocol: str, method: str, seed: int) -> Path:
    """Create a fresh run directory; never reuse an existing one. Checks the runs dir is writable."""
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe = runs_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"runs directory {runs_dir} is not usable: {exc}") from exc
    path = runs_dir / run_dir_name(protocol, method, seed)
    try:
        path.mkdir()
    except FileExistsError:
        raise RunDirError(f"run directory {path} already exists; psbench never overwrites a run") from None
    return path


def git_info(cwd: Path | None = None) -> dict[str, Any]:
    """The git sha of the code and whether the tree has uncommitted changes."""
    cwd = cwd or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"sha": "unknown", "dirty": None}


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``, else "cpu"."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


#: environment variables that select other CPU kernels on the same machine (recorded in every run)
KERNEL_ENV_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_kernels() -> dict[str, Any]:
    """The vectorised kernels torch picked on this CPU, and any environment variable that chose other ones."""
    overrides = {k: os.environ[k] for k in KERNEL_ENV_VARS if k in os.environ}
    return {"aten": torch.backends.cpu.get_cpu_capability(), "overrides": overrides}


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, device and code revision, recorded in every run."""
    import av
    import open_clip

    device = torch.device(device)
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "av": av.__version__,
        "ffmpeg": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fp32_inference_products": (
            "oneDNN (psbench.ops.linear)" if cpu_linear.onednn_fp32_available() else "torch default BLAS"
        ),
        "cpu_native_bf16": bf16_matmul_is_fast(torch.device("cpu")),
        "cpu_kernels": cpu_kernels(),
        "git": git_info(),
    }
    return env


def hash_strings(items: Iterable[str]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def list_runs(runs_dirs: Iterable[Path]) -> list[Path]:
    """Every finished run (a directory with metrics.json) under the given directories."""
    found: list[Path] = []
    for root in runs_dirs:
        root = Path(root)
        if (root / "metrics.json").is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p.parent for p in root.glob("*/metrics.json")))
    return found

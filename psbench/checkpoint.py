"""Reading weight files without running code from them.

A plain ``torch.save`` state dict is read with ``torch.load(weights_only=True)`` (tensors and plain
containers only) and a ``.safetensors`` file with safetensors. A general pickle or a TorchScript archive
(OpenAI's original ``ViT-B-32.pt`` is one) can execute arbitrary code when loaded, so it is refused
unless the caller passes ``trust=True`` (the CLI's ``--trust-checkpoint``). Run checkpoints written by
psbench are always plain state dicts and are always loaded with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: keys of an OpenAI TorchScript CLIP state dict that are not parameters (open_clip drops them too)
OPENAI_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")

TRUST_HINT = (
    "pass --trust-checkpoint only if you trust where the file comes from: loading a pickle or TorchScript "
    "archive can execute arbitrary code (or convert it once to .safetensors)"
)


class UntrustedCheckpointError(RuntimeError):
    """A weights file needs code execution to load and the caller did not opt in."""


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip holding ``*/constants.pkl`` or ``*/code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint (``{"state_dict": ...}`` or bare; ``module.`` stripped)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: not a state dict: entry {bad[0]!r} is not a tensor")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, Tensor]:
    """Tensors of a weights file on the CPU; refuses code-executing formats unless ``trust``.

    Raises FileNotFoundError, :class:`UntrustedCheckpointError` (names the file and the flag), or
    ValueError for a file that holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path), device="cpu"), path)
    if is_torchscript(path):
        if not trust:
            raise UntrustedCheckpointError(f"{path} is a TorchScript archive; {TRUST_HINT}")
        log.warning("loading TorchScript archive %s (trusted by --trust-checkpoint)", path)
        state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        for key in OPENAI_NON_PARAMETER_KEYS:
            state.pop(key, None)
        return _unwrap(state, path)
    try:
        return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    except pickle.UnpicklingError as exc:
        if not trust:
            first = str(exc).strip().splitlines()[-1][:200]
            raise UntrustedCheckpointError(
                f"{path} holds pickled objects other than tensors ({first}); {TRUST_HINT}"
            ) from None
    log.warning("loading pickled checkpoint %s with weights_only=False (trusted by --trust-checkpoint)", path)
    return _unwrap(torch.load(path, map_location="cpu", weights_only=False), path)


def load_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """A psbench run checkpoint (``checkpoint_last.pt``, ``model_selected.pt``); weights_only, always."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise RuntimeError(f"cannot read run checkpoint {path}: {str(exc).splitlines()[0][:300]}") from exc

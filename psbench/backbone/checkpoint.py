"""Reading weight files without running code from them.

A plain ``torch.save`` state dict is read with ``torch.load(weights_only=True)`` (tensors and plain
containers only) and a ``.safetensors`` file with safetensors. A general pickle or a TorchScript archive
(OpenAI's original ``ViT-B-32.pt`` is one) can execute arbitrary code when loaded, so it is refused
unless the caller passes ``trust=True`` (the CLI's ``--trust-checkpoint``). Run checkpoints written by
psbench are plain containers of tensors and load with ``weights_only=True``; one rule
(:func:`load_torch_file`) decides for weights and run checkpoints alike.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
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


class CheckpointFormatError(ValueError):
    """A file is not a weights file / run checkpoint psbench can read (empty, truncated, garbage)."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def torch_refusal_reason(exc: BaseException) -> str:
    """The first full sentence of torch's reason for refusing a file (ANSI codes and boilerplate removed).

    ``torch.load(weights_only=True)`` wraps the real reason ("Unsupported global: GLOBAL argparse.Namespace
    was not an allowed global by default.") in several sentences of advice; this returns the reason whole.
    """
    text = _ANSI.sub("", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    text = " ".join(text.split("Check the documentation of torch.load")[0].split())
    first = re.match(r"(.+?[.!?])(\s|$)", text)
    return (first.group(1) if first else text) or type(exc).__name__


def _looks_pickled(path: Path) -> bool:
    """True for a torch.save zip archive or a file that starts like a pickle (protocol 2+ opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _is_garbage_pickle(reason: str) -> bool:
    """True when torch refused bytes that are no valid pickle (an unknown opcode), not a disallowed object."""
    return reason.startswith("Unsupported operand")


def load_torch_file(path: str | Path, trust: bool = False, what: str = "weights file") -> Any:
    """``torch.load`` of a local file with one trust rule for every caller (CLIP weights, run checkpoints).

    Tensors and plain containers load with ``weights_only=True``. A pickle holding other objects needs
    ``trust`` (the CLI's ``--trust-checkpoint``) and is then loaded with ``weights_only=False`` and a warning.
    Raises FileNotFoundError, :class:`UntrustedCheckpointError`, or :class:`CheckpointFormatError` for an
    empty, truncated or garbage file (with the reason, never "pickled objects" for bytes that are no pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"{path} is empty (0 bytes), not a {what}")
    try:
        with warnings.catch_warnings():  # torch warns about the "protocol" byte of garbage that starts with 0x80
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = torch_refusal_reason(exc)
        if not _looks_pickled(path) or _is_garbage_pickle(reason):
            raise CheckpointFormatError(
                f"{path} is not a {what}: neither a torch.save archive nor a pickle ({reason})"
            ) from None
        if not trust:
            raise UntrustedCheckpointError(
                f"{path} holds pickled objects other than tensors ({reason}); {TRUST_HINT}"
            ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load of foreign bytes fails with any exception type
        detail = torch_refusal_reason(exc) if str(exc).strip() else f"{type(exc).__name__}, no message"
        if isinstance(exc, EOFError) and not str(exc).strip():
            detail = "unexpected end of file"
        raise CheckpointFormatError(
            f"{path} is not a readable {what} (truncated or not written by torch.save): {detail}"
        ) from None
    log.warning("loading pickled %s %s with weights_only=False (trusted by --trust-checkpoint)", what, path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a format error of this file
        raise CheckpointFormatError(f"{path} could not be unpickled: {type(exc).__name__}: {exc}") from None


def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, Tensor]:
    """Tensors of a weights file on the CPU; refuses code-executing formats unless ``trust``.

    Raises FileNotFoundError, :class:`UntrustedCheckpointError` (names the file and the flag), or
    ValueError (:class:`CheckpointFormatError`) for a file that holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"{path} is empty (0 bytes), not a weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path), device="cpu"), path)
        except SafetensorError as exc:
            raise CheckpointFormatError(f"{path} is not a readable .safetensors file: {exc}") from None
    if is_torchscript(path):
        if not trust:
            raise UntrustedCheckpointError(f"{path} is a TorchScript archive; {TRUST_HINT}")
        log.warning("loading TorchScript archive %s (trusted by --trust-checkpoint)", path)
        state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        for key in OPENAI_NON_PARAMETER_KEYS:
            state.pop(key, None)
        return _unwrap(state, path)
    return _unwrap(load_torch_file(path, trust, "weights file"), path)


def load_run_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """A psbench run checkpoint (``checkpoint_last.pt``, ``model_selected.pt``) under the same trust rule.

    psbench writes plain containers of tensors, which load with ``weights_only=True``; a checkpoint that
    holds other pickled objects (an older or foreign writer) loads only with ``trust``.
    """
    path = Path(path)
    ckpt = load_torch_file(path, trust, "run checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointFormatError(f"{path} is not a psbench run checkpoint (no 'model' state dict)")
    return ckpt

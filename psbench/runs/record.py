"""Opening a run directory: one reader, one trust rule, one identity for resume, eval, index and reports.

:func:`open_run` reads ``config.json`` (and ``metrics.json``, ``environment.json``, ``eval_*.json`` when
present) into a :class:`RunRecord`. Every command that opens a run goes through it, so:

- the run's checkpoints load under one rule (:func:`psbench.backbone.checkpoint.load_run_checkpoint`: tensors only,
  unless ``--trust-checkpoint``), with one error message;
- the inputs a run read are resolved one way: the recorded absolute paths, or ``--data-root`` /
  ``--weights`` overrides, which must hash to what the run recorded (:meth:`RunRecord.inputs`,
  :meth:`RunRecord.check_hashes`);
- a run's identity (:func:`input_hashes`): besides the protocol and data hashes, the sha256 of the CLIP
  weights file and of the tokenizer vocabulary, which report and table never merge across.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from psbench.files import jsonio
from psbench.files.filehash import file_sha256

log = logging.getLogger(__name__)

#: ``hashes["weights"]`` of a run whose backbone was randomly initialised on purpose
RANDOM_INIT = "random"
#: identity shown for a run recorded before weights were hashed (never merged with a hashed one)
UNRECORDED = "unrecorded"

_HASH_NAMES = {
    "protocol": "protocol hash",
    "test_data": "test-data hash",
    "train_data": "train-data hash",
    "weights": "CLIP weights sha256",
    "tokenizer_vocab": "tokenizer vocabulary sha256",
}


class RunRecordError(ValueError):
    """A directory is not a usable run directory, or its records cannot be read."""


class RunMismatchError(ValueError):
    """The data or weights offered to a run differ from what the run recorded."""


def weights_identity(weights: Path | None) -> str:
    """sha256 of the weights file, or :data:`RANDOM_INIT` for a backbone built without weights."""
    return file_sha256(weights) if weights is not None else RANDOM_INIT


def input_hashes(weights: Path | None) -> dict[str, str]:
    """The hashes of what a run loads from disk besides its data: CLIP weights and tokenizer vocabulary."""
    from psbench.backbone.clip import tokenizer_vocab_path

    return {"weights": weights_identity(weights), "tokenizer_vocab": file_sha256(tokenizer_vocab_path())}


def absolute(path: str | Path) -> Path:
    """``path`` made absolute against the current directory (``..`` folded, symlinks kept)."""
    return Path(os.path.abspath(Path(path).expanduser()))


@dataclass(frozen=True)
class RunInputs:
    """Where a run's data and CLIP weights are read from (absolute paths)."""

    data_root: Path
    weights: Path | None


@dataclass
class RunRecord:
    """The records of one run directory. ``config`` is the parsed :class:`~psbench.protocol.RunConfig`."""

    path: Path
    record: dict[str, Any]  # config.json
    metrics: dict[str, Any] | None  # metrics.json (None: the run has not finished)
    environment: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)
    trust_checkpoint: bool = False

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @cached_property
    def config(self) -> Any:
        from psbench.protocol import RunConfig

        try:
            return RunConfig.from_dict(self.record["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RunRecordError(f"{self.path / 'config.json'}: not a valid run config ({exc})") from exc

    @property
    def hashes(self) -> dict[str, str]:
        """What the run recorded: protocol, test/train data, weights and tokenizer-vocabulary hashes."""
        return dict(self.record.get("hashes") or (self.metrics or {}).get("hashes") or {})

    def _recorded_path(self, key: str) -> Path | None:
        value = self.record.get(key)
        return Path(value) if value else None

    def inputs(self, data_root: Path | None = None, weights: Path | None = None) -> RunInputs:
        """The data root and weights to use: the overrides, else the recorded paths (see :meth:`weights_input`).

        The data root is checked by the caller against the data hashes (:meth:`check_hashes`).
        """
        return RunInputs(self.data_root_input(data_root), self.weights_input(weights))

    def data_root_input(self, data_root: Path | None = None) -> Path:
        """``data_root`` (absolute), else the recorded data root."""
        return absolute(data_root) if data_root is not None else self._recorded_input("data_root", "--data-root")

    def weights_input(self, weights: Path | None = None) -> Path | None:
        """``weights`` (absolute), else the recorded weights path; it must hash to the recorded sha256
        (else :class:`RunMismatchError`)."""
        if weights is not None:
            path: Path | None = absolute(weights)
            if not path.is_file():
                raise FileNotFoundError(f"CLIP weights not found: {path} (given by --weights)")
        else:
            path = self._recorded_input("weights", "--weights") if self.record.get("weights") else None
            if path is not None and not path.is_file():
                raise FileNotFoundError(
                    f"CLIP weights not found: {path} (recorded in {self.path / 'config.json'}); "
                    "if the file moved, pass --weights NEW_PATH (it must have the recorded sha256)"
                )
        recorded = self.hashes.get("weights")
        if recorded is None:
            log.warning("%s records no weights hash (older psbench): the weights cannot be checked", self.path)
        elif path is None and recorded != RANDOM_INIT:
            raise RunRecordError(f"{self.path}: the run loaded CLIP weights but config.json records no path")
        elif recorded != weights_identity(path):
            raise RunMismatchError(
                f"{self.path}: the CLIP weights {path} (sha256 {weights_identity(path)[:12]}) differ from the "
                f"weights the run used ({self.record.get('weights')}, sha256 {recorded[:12]})"
            )
        return path

    def _recorded_input(self, key: str, flag: str) -> Path:
        recorded = self._recorded_path(key)
        if recorded is None:
            raise RunRecordError(f"{self.path / 'config.json'} records no {key}; pass {flag}")
        if not recorded.is_absolute() and not recorded.exists():
            raise RunRecordError(
                f"{self.path / 'config.json'} records {key} {str(recorded)!r} relative to the directory the run was "
                f"started from (older psbench); run from there or pass {flag}"
            )
        return absolute(recorded)

    def check_hashes(self, current: dict[str, str], inputs: RunInputs) -> None:
        """Refuse when any hash the run recorded differs from ``current`` (keys absent on either side skipped)."""
        recorded = self.hashes
        differing = [k for k in current if k in recorded and recorded[k] != current[k]]
        if not differing:
            return
        where = {
            "test_data": f"data root {inputs.data_root}",
            "train_data": f"data root {inputs.data_root}",
            "weights": f"weights {inputs.weights}",
        }
        parts = [
            f"{_HASH_NAMES.get(k, k)} recorded {recorded[k][:16]}, now {current[k][:16]}"
            + (f" ({where[k]})" if k in where else "")
            for k in differing
        ]
        raise RunMismatchError(f"{self.path}: the inputs differ from what the run saw: " + "; ".join(parts))

    # -- checkpoints -------------------------------------------------------------------------------------
    @property
    def selected_checkpoint(self) -> Path | None:
        """The weights the run selected: ``model_selected.pt`` if selection kept an earlier epoch, else the last."""
        for name in ("model_selected.pt", "checkpoint_last.pt"):
            if (self.path / name).is_file():
                return self.path / name
        return None

    def load_model_state(self) -> dict[str, Any] | None:
        """The selected checkpoint's model state dict; None for a zero-shot run without one."""
        from psbench.backbone.checkpoint import load_run_checkpoint

        ckpt = self.selected_checkpoint
        if ckpt is None:
            if self.config.train.epochs > 0:
                raise FileNotFoundError(f"{self.path}: no checkpoint found (the run did not finish an epoch)")
            return None
        return load_run_checkpoint(ckpt, self.trust_checkpoint)["model"]

    def load_training_state(self) -> dict[str, Any] | None:
        """``checkpoint_last.pt`` for resuming (None if the run never finished an epoch)."""
        from psbench.train.loop import load_resume_state

        ckpt = self.path / "checkpoint_last.pt"
        return load_resume_state(ckpt, self.trust_checkpoint) if ckpt.is_file() else None


def _read(path: Path) -> Any:
    try:
        return jsonio.read_json(path)
    except ValueError as exc:  # JsonFileError: names the file, line and column
        raise RunRecordError(str(exc)) from None
    except OSError as exc:
        raise RunRecordError(f"cannot read run record {path}: {exc.strerror or exc}") from None


def open_run(run_dir: str | Path, trust_checkpoint: bool = False) -> RunRecord:
    """Read a run directory's records; :class:`RunRecordError` names the directory or file that is wrong."""
    path = Path(run_dir)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise RunRecordError(f"{path} is not a run directory ({what})")
    record = _read(path / "config.json")
    if not isinstance(record, dict):
        raise RunRecordError(f"{path / 'config.json'}: expected a JSON object")
    metrics = _read(path / "metrics.json") if (path / "metrics.json").is_file() else None
    env = _read(path / "environment.json") if (path / "environment.json").is_file() else {}
    evals = []
    for eval_path in sorted(path.glob("eval_*.json")):
        entry = _read(eval_path)
        entry["_file"] = eval_path.name
        evals.append(entry)
    return RunRecord(path, record, metrics, env, evals, trust_checkpoint)

"""Protocols are data: TOML files in ``protocols/`` that fix everything that moves a number.

A protocol file has the sections below; unknown keys anywhere are an error naming the key. A
method may override ``train``/``test`` keys and pass options in ``[method.<name>]`` (a variant
such as ``promptswitch-noswitch`` also receives its family's table, ``[method.promptswitch]``).
``--set key=value`` overrides any key of the resolved run config (``train.epochs=0``,
``options.num_prompts=3``). The resolved config is hashed (without seed and machine-only keys) into
every run record, so runs with different settings never share a report column.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psbench.registry import UnknownKeyError

PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "protocols"


class ProtocolError(ValueError):
    """A protocol file or override is malformed (unknown key, wrong type, bad value)."""


def _rule(
    default: Any,
    *,
    choices: str | tuple[str, ...] | None = None,
    min: float | None = None,  # noqa: A002 - reads as the schema it declares
    max: float | None = None,  # noqa: A002
    above: float | None = None,
) -> Any:
    """A config field with its declared values, checked when a protocol or ``--set`` is resolved.

    ``choices``: the valid strings, or ``"module:NAME"`` naming a tuple or a Registry (read when checked);
    ``min`` / ``max``: inclusive bounds; ``above``: an exclusive lower bound.
    """
    rules = {k: v for k, v in (("choices", choices), ("min", min), ("max", max), ("above", above)) if v is not None}
    return field(default=default, metadata={"rules": rules})


def _valid_choices(spec: str | tuple[str, ...]) -> list[str]:
    if isinstance(spec, tuple):
        return list(spec)
    module, _, name = spec.partition(":")
    found = getattr(importlib.import_module(module), name)
    return list(found.names()) if hasattr(found, "names") else list(found)


def _check_rules(rules: dict[str, Any], value: Any, where: str) -> None:
    """Raise ProtocolError naming ``where`` if ``value`` breaks a declared choice or range."""
    if "choices" in rules:
        valid = _valid_choices(rules["choices"])
        if value not in valid:
            raise ProtocolError(f"{where} = {value!r}: not a valid value; valid: {', '.join(valid)}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"{where} = {value!r}: must be a finite number")
        low, high, above = rules.get("min"), rules.get("max"), rules.get("above")
        if low is not None and value < low:
            raise ProtocolError(f"{where} = {value!r}: must be >= {low}")
        if high is not None and value > high:
            raise ProtocolError(f"{where} = {value!r}: must be <= {high}")
        if above is not None and value <= above:
            raise ProtocolError(f"{where} = {value!r}: must be > {above}")


_SAMPLERS = "psbench.data.sampling:SAMPLERS"
_TRANSFORMS = "psbench.data.transforms:TRANSFORMS"


@dataclass
class DataConfig:
    dataset: str = _rule("synthetic", choices="psbench.data.datasets:DATASETS")
    root: str = "data/synthetic"  # default data root, relative to the working directory
    train_split: str = "train"
    val_split: str = ""  # empty: the dataset has no validation split
    test_split: str = "test"
    # videos the test annotation file must list (after exclude_videos); 0: not fixed by the protocol
    # (synthetic: the count the generator recorded in synthetic_config.json)
    test_videos: int = _rule(0, min=0)
    skip_missing: bool = False
    video_dir: str = "videos"  # relative to the data root
    files: dict[str, str] = field(default_factory=dict)  # annotation file names, dataset specific
    exclude_videos: list[str] = field(default_factory=list)  # e.g. the LSMDC clip X-Pool/PS skip
    dedupe_train_by_video: bool = False  # X-Pool/PS LSMDC: one caption per clip, the last one wins


@dataclass
class BackboneConfig:
    arch: str = "ViT-B-32-quickgelu"
    weights: str = ""  # local path; relative paths are resolved against the data root
    # a positional embedding of another length (text context, visual grid) is an error unless this is true;
    # then it is interpolated, logged at WARNING and recorded in the run record (weights_adjusted)
    interpolate_pos_embed: bool = False


@dataclass
class TrainConfig:
    frames: int = _rule(12, min=1)
    sampler: str = _rule("uniform", choices=_SAMPLERS)
    segments: int = _rule(0, min=0)  # sampler segments (Prompt Switch: num_prompts); 0 = sampler default
    transform: str = _rule("resize_center_crop", choices=_TRANSFORMS)
    resolution: int = _rule(224, min=1)
    max_words: int = _rule(32, min=1)
    batch_size: int = _rule(32, min=1)  # effective batch across all processes
    epochs: int = _rule(5, min=0)
    lr_clip: float = _rule(1e-6, min=0)
    lr_new: float = _rule(1e-5, min=0)
    weight_decay: float = _rule(0.2, min=0)
    no_decay_bias_norm: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = _rule(1e-6, above=0)
    warmup: float = _rule(0.1, min=0, max=1)  # fraction of total steps
    grad_clip: float = _rule(1.0, above=0)
    twin_pairs: bool = False  # synthetic: time-reversed twins in the same batch
    selection: str = _rule("last", choices="psbench.train.loop:SELECTION_RULES")
    num_workers: int = _rule(2, min=-1)  # loader processes; -1: every CPU this process may use (recorded)
    skip_corrupt: bool = False  # skip (and count) training videos that fail to decode instead of failing
    # -- training-recipe choices (set per method in the protocols' [method.*.train] tables; see
    # protocols/README.md "Training recipes"); defaults = psbench's original behaviour
    unique_videos: bool = False  # drop repeated videos from each batch (Prompt Switch collate_fn)
    drop_last: bool = True  # False: keep the last partial batch (X-Pool / Prompt Switch DataLoader)
    schedule: str = _rule("psbench_cosine", choices="psbench.train.optim:SCHEDULES")
    optimizer: str = _rule("adamw", choices="psbench.train.optim:OPTIMIZERS")
    per_tensor_clip: float = _rule(0.0, min=0)  # bert_adam: clip each tensor's grad norm (0 = off)
    infonce_reduction: str = _rule("mean", choices="psbench.method:INFONCE_REDUCTIONS")


#: recipe fields left out of the protocol hash while at their default (old protocol hashes unchanged)
RECIPE_DEFAULTS: dict[str, Any] = {
    "unique_videos": False,
    "drop_last": True,
    "schedule": "psbench_cosine",
    "optimizer": "adamw",
    "per_tensor_clip": 0.0,
    "infonce_reduction": "mean",
}


def check_train_recipe(train: TrainConfig, where: str) -> None:
    """Cross-field checks of the recipe choices (each field's own values are checked by its rule)."""
    if train.per_tensor_clip > 0 and train.optimizer != "bert_adam":
        raise ProtocolError(
            f"{where}per_tensor_clip = {train.per_tensor_clip}: only the bert_adam optimiser clips per tensor "
            f"(optimizer = {train.optimizer!r})"
        )


@dataclass
class TestConfig:
    frames: int = _rule(12, min=1)
    sampler: str = _rule("uniform", choices=_SAMPLERS)
    segments: int = _rule(0, min=0)
    transform: str = _rule("resize_center_crop", choices=_TRANSFORMS)
    resolution: int = _rule(224, min=1)
    max_words: int = _rule(32, min=1)
    batch_size: int = _rule(32, min=1)
    tie_rule: str = _rule("expected", choices="psbench.retrieval.metrics:TIE_RULES")
    # "group_max" (lenient, official MSVD) | "all_captions" (strict)
    v2t_rule: str = _rule("group_max", choices="psbench.retrieval.metrics:V2T_RULES")
    dsl: bool = False
    dsl_tau: float = _rule(1.0, above=0)
    num_workers: int = _rule(2, min=-1)  # loader processes; -1: every CPU this process may use (recorded)


@dataclass
class RunConfig:
    """Everything one run needs: the protocol resolved for one method and one seed."""

    protocol: str
    version: int
    method: str
    seed: int
    data: DataConfig
    backbone: BackboneConfig
    train: TrainConfig
    test: TestConfig
    options: dict[str, Any] = field(default_factory=dict)
    reference: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Rebuild a run config recorded in a run directory (``config.json``)."""
        d = dict(d)
        for name, section in _SECTIONS.items():
            d[name] = _build(section, d[name], f"recorded config: {name}.")
        check_train_recipe(d["train"], "recorded config: train.")
        return cls(**d)

    def protocol_hash(self) -> str:
        """Hash of every setting that can move a score (not the seed, worker counts or paths)."""
        d = self.to_dict()
        for key in SCORE_NEUTRAL_KEYS:
            section, _, name = key.rpartition(".")
            (d[section] if section else d).pop(name)
        if not d["train"]["skip_corrupt"]:  # the default leaves the hash of existing protocols unchanged
            d["train"].pop("skip_corrupt")
        for key, default in RECIPE_DEFAULTS.items():  # likewise for the training-recipe choices
            if d["train"].get(key) == default:
                d["train"].pop(key)
        if not d["backbone"]["interpolate_pos_embed"]:  # the default leaves existing hashes unchanged
            d["backbone"].pop("interpolate_pos_embed")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


#: config keys that never move a score: left out of the protocol hash and of the report's "what differs" labels
#: (``data.test_videos`` is a check of the input; ``backbone.weights`` is a path, its sha256 is recorded apart)
SCORE_NEUTRAL_KEYS = (
    "seed",
    "reference",
    "data.root",
    "data.skip_missing",
    "data.test_videos",
    "train.num_workers",
    "test.num_workers",
    "backbone.weights",
)

_SECTIONS = {"data": DataConfig, "backbone": BackboneConfig, "train": TrainConfig, "test": TestConfig}
_TOP_KEYS = {"name", "version", "description", "seeds", "method", "reference", *_SECTIONS}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = ", ".join(where + k for k in unknown)
        raise ProtocolError(f"unknown key(s) {names}; valid: {', '.join(sorted(fields))}")
    obj = cls()
    for key, value in values.items():
        current = getattr(obj, key)
        value = coerce_setting(value, current, f"{where}{key}")
        _check_rules(fields[key].metadata.get("rules", {}), value, f"{where}{key}")
        setattr(obj, key, value)
    return obj


def coerce_setting(value: Any, current: Any, where: str) -> Any:
    """``value`` as the kind of ``current`` (bool, int, float, str, tuple, list, table), else a ProtocolError."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ProtocolError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ProtocolError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(current):
            raise ProtocolError(f"{where}: expected a list of {len(current)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if isinstance(current, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    return value


def protocol_path(name: str) -> Path:
    """The file of a named protocol, or an error listing the valid names."""
    path = PROTOCOL_DIR / f"{name}.toml"
    if not path.is_file():
        raise UnknownKeyError("protocol", name, list_protocols())
    return path


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))


def load_protocol(name_or_path: str | Path) -> dict[str, Any]:
    """Read a protocol file (by name or path) and check its top-level keys."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = protocol_path(str(name_or_path))
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{path}: {exc}") from exc
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ProtocolError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("name", "version", "seeds"):
        if key not in raw:
            raise ProtocolError(f"{path}: missing required key {key!r}")
    raw["_path"] = str(path)
    return raw


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=0", "options.num_prompts=3"]`` -> {"train.epochs": 0, ...} (TOML values)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ProtocolError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare string such as sampler=uniform
        out[key.strip()] = value
    return out


def method_family(method: str) -> str:
    """``promptswitch-noswitch`` -> ``promptswitch`` (variants share their family's settings)."""
    return method.split("-", 1)[0]


def resolve(
    protocol: dict[str, Any], method: str, seed: int | None = None, sets: dict[str, Any] | None = None
) -> RunConfig:
    """Apply method overrides and ``--set`` values to a protocol; return the run config."""
    where = protocol.get("_path", protocol["name"])
    sections: dict[str, dict[str, Any]] = {k: dict(protocol.get(k, {})) for k in _SECTIONS}
    options: dict[str, Any] = {}
    method_tables = protocol.get("method", {})
    for key in dict.fromkeys([method_family(method), method]):
        table = dict(method_tables.get(key, {}))
        for section in _SECTIONS:
            sections[section].update(table.pop(section, {}))
        options.update(table.pop("options", {}))
        if table:
            raise ProtocolError(f"{where}: [method.{key}] unknown key(s) {', '.join(sorted(table))}")
    for key, value in (sets or {}).items():
        head, _, rest = key.partition(".")
        if head == "options" and rest:
            options[rest] = value
        elif head in _SECTIONS and rest:
            _build(_SECTIONS[head], {rest: value}, "--set " + head + ".")  # named as the user wrote it
            sections[head][rest] = value
        else:
            raise ProtocolError(f"--set {key}: unknown key; use data.*, backbone.*, train.*, test.* or options.*")
    seeds = protocol["seeds"]
    train = _build(TrainConfig, sections["train"], f"{where}: train.")
    check_train_recipe(train, f"{where}: train.")
    return RunConfig(
        protocol=protocol["name"],
        version=int(protocol["version"]),
        method=method,
        seed=int(seeds[0] if seed is None else seed),
        data=_build(DataConfig, sections["data"], f"{where}: data."),
        backbone=_build(BackboneConfig, sections["backbone"], f"{where}: backbone."),
        train=train,
        test=_build(TestConfig, sections["test"], f"{where}: test."),
        options=options,
        reference=list(protocol.get("reference", [])),
    )


def protocol_datasets() -> list[str]:
    """The datasets the shipped protocols name."""
    return sorted({str(load_protocol(n).get("data", {}).get("dataset", "")) for n in list_protocols()} - {""})


def default_protocol_for(dataset: str) -> str:
    """The protocol named like the dataset, else the shortest-named protocol for that dataset."""
    names = list_protocols()
    if dataset in names:
        return dataset
    matches = sorted((n for n in names if load_protocol(n).get("data", {}).get("dataset") == dataset), key=len)
    if not matches:
        raise UnknownKeyError("dataset", dataset, protocol_datasets())
    return matches[0]


def protocol_for(dataset: str, protocol: str | Path | None = None, check_dataset: bool = True) -> dict[str, Any]:
    """The protocol chosen by ``--protocol`` (else the dataset's default), checked to be for ``dataset``."""
    proto = load_protocol(protocol if protocol is not None else default_protocol_for(dataset))
    found = proto.get("data", {}).get("dataset")
    if check_dataset and found != dataset:
        raise ProtocolError(f"protocol {proto['name']} is for dataset {found!r}, not {dataset!r}")
    return proto

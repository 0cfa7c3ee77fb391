"""What ``psbench efficiency`` measures: :class:`EfficiencyConfig`, and ``--set key=value`` over it.

``--set`` reaches every field (``--set queries=500``, ``--set block_videos=8192``) and every method's
constructor options (``--set options.xpool.num_heads=4``), with the same TOML values as ``psbench run --set``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from psbench.catalog import efficiency_methods, method_options
from psbench.protocol import ProtocolError, coerce_setting
from psbench.retrieval import engine

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class EfficiencyConfig:
    """What to measure. ``methods=None`` takes the catalogue's methods, inference forms and chance floor
    (not the ablations)."""

    methods: list[str] | None = None
    arch: str = "ViT-B-32-quickgelu"
    frames: int = 12
    queries: int = 1000
    gallery: int = 100_000
    sweep: bool = False
    min_gallery: int = 1000
    points_per_decade: int = 2
    ratio_galleries: tuple[int, ...] = (1000, 10_000, 100_000)
    budget_s: float = 60.0
    max_gallery_bytes: int | None = None  # None: min(8 GiB, half the available memory of the device)
    device: str = "cpu"
    dtype: str = "fp32"
    k: int = 10
    warmup: int = 1
    repeats: int = 3
    offline_repeats: int = 3
    text_queries: int = 64
    block_queries: int = 1024
    block_videos: int = 16384
    fvcore_queries: int = 4
    fvcore_videos: int = 64
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default)
    prefilter: str = "auto"  # engine.topk's bfloat16 prefilter: auto | bf16 | off (exact either way)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method name -> its constructor options

    def __post_init__(self) -> None:
        measured = self.methods or efficiency_methods()
        for name, values in self.options.items():
            accepted = method_options(name)  # names an unknown method
            if name not in measured:
                raise ValueError(f"options.{name}: {name!r} is not measured (measured: {', '.join(measured)})")
            unknown = sorted(set(values) - set(accepted))
            if unknown:
                valid = ", ".join(accepted) or "(none)"
                raise ValueError(f"options.{name}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        for name in ("frames", "queries", "gallery", "min_gallery", "repeats", "k", "text_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prefilter not in engine.PREFILTERS:
            raise ValueError(f"prefilter {self.prefilter!r}; valid: {', '.join(engine.PREFILTERS)}")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s}")
        smallest = min(self.min_gallery, self.gallery) if self.sweep else self.gallery
        if self.k > smallest:
            raise ValueError(
                f"k={self.k} is more than the smallest gallery measured (N={smallest}); use k <= {smallest}"
            )


def apply_sets(cfg: EfficiencyConfig, sets: dict[str, Any]) -> EfficiencyConfig:
    """``cfg`` with ``--set`` values applied (parsed by :func:`psbench.protocol.parse_set`); unknown keys and
    wrongly typed values are errors naming the key."""
    fields = {f.name: f for f in dataclasses.fields(EfficiencyConfig)}
    changes: dict[str, Any] = {}
    options = {name: dict(values) for name, values in cfg.options.items()}
    for key, value in sets.items():
        head, _, rest = key.partition(".")
        if head == "options":
            name, _, option = rest.partition(".")
            if not name or not option:
                raise ProtocolError(f"--set {key}: method options are options.METHOD.OPTION=value")
            options.setdefault(name, {})[option] = value
        elif key in fields and key != "options":
            changes[key] = _field_value(key, value, getattr(cfg, key))
        else:
            valid = ", ".join(sorted(set(fields) - {"options"}))
            raise ProtocolError(f"--set {key}: unknown key; valid: {valid}, options.METHOD.OPTION")
    return dataclasses.replace(cfg, **changes, options=options)


def _field_value(key: str, value: Any, current: Any) -> Any:
    """A --set value checked against the field's current value (None-defaulted fields take their kind)."""
    where = f"--set {key}"
    if key == "methods":
        names = value.split(",") if isinstance(value, str) else value
        return coerce_setting([str(n).strip() for n in names if str(n).strip()], [], where)
    if key == "ratio_galleries":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ProtocolError(f"{where}: expected a list of integers, got {value!r}")
        return tuple(value)
    if current is None:  # threads, max_gallery_bytes: an integer
        return coerce_setting(value, 0, where)
    return coerce_setting(value, current, where)

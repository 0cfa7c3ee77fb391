"""The one table of methods: every name the runner, the CLI, ``efficiency``, ``bench`` and the tests know.

A method is one file (a :class:`~psbench.method.RetrievalMethod` subclass) plus one line here. The
table maps a name to ``"module:Class"`` (imported only when the method is used, so ``psbench --help``
stays fast and this module has no static import of ``baselines``), a role, and the options the entry
fixes. Ablations and other inference forms are plain entries over the same class with options fixed:
no subclass, no metaprogramming (timm's registered variants, lm-eval's ``MODEL_MAPPING``).

Roles:

- ``method``: a method of the comparison (trained and timed);
- ``ablation``: the same method with one component removed (trained in ``bench``, not timed);
- ``form``: another inference form of a method's trained model (timed by ``efficiency``, not trained);
- ``floor``: a reference point without learning (the random chance floor; in ``bench`` and ``efficiency``).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from psbench.registry import UnknownKeyError

if TYPE_CHECKING:
    from torch import nn

    from psbench.method import RetrievalMethod

ROLES = ("method", "ablation", "form", "floor")


@dataclass(frozen=True)
class MethodEntry:
    """One catalogue line: where the class lives, its role, the options it fixes, a one-line description."""

    target: str
    role: str = "method"
    fixed: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"catalogue entry {self.target}: role {self.role!r} not in {ROLES}")
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))


def _entry(target: str, role: str = "method", description: str = "", **fixed: Any) -> MethodEntry:
    return MethodEntry(target, role, MappingProxyType(fixed), description)


_PS = "psbench.promptswitch.method:PromptSwitch"

#: name -> entry, in display order
METHOD_TABLE: dict[str, MethodEntry] = {
    "meanpool": _entry("baselines.meanpool:MeanPool"),
    "tokenshift": _entry("baselines.tokenshift:TokenShift"),
    "videoproxy": _entry("baselines.videoproxy:VideoProxy"),
    "xpool": _entry("baselines.xpool:XPool"),
    "xpool-folded": _entry(
        "baselines.xpool:XPool",
        "form",
        "X-Pool in its cheapest exact inference form (W_o and the norms folded; same parameters and scores)",
        fold_out_proj=True,
        fold_norms=True,
    ),
    "promptswitch": _entry(_PS),
    "promptswitch-noswitch": _entry(
        _PS, "ablation", "Ablation: no switch; prompts stay per frame, frames never interact.", switch=False
    ),
    "promptswitch-noagg": _entry(
        _PS, "ablation", "Ablation: no aggregation; the class token goes straight to ln_post + proj.", aggregation=False
    ),
    "promptswitch-nocap": _entry(_PS, "ablation", "Ablation: no caption decoder or caption loss.", caption_loss=False),
    "random": _entry("baselines.chance:RandomScores", "floor"),
}


def list_methods(*roles: str) -> list[str]:
    """Names in catalogue order, optionally only those with one of ``roles``."""
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown method role {role!r}; valid: {', '.join(ROLES)}")
    return [name for name, entry in METHOD_TABLE.items() if not roles or entry.role in roles]


def bench_methods() -> list[str]:
    """What ``psbench bench`` trains and evaluates: methods, ablations and the chance floor."""
    return list_methods("method", "ablation", "floor")


def efficiency_methods() -> list[str]:
    """What ``psbench efficiency`` times by default: methods, inference forms and the chance floor."""
    return list_methods("method", "form", "floor")


def method_entry(name: str) -> MethodEntry:
    try:
        return METHOD_TABLE[name]
    except KeyError:
        raise UnknownKeyError("method", name, list(METHOD_TABLE)) from None


def method_class(name: str) -> type[RetrievalMethod]:
    """The class behind a catalogue name (its module is imported on first use)."""
    module, _, attr = method_entry(name).target.partition(":")
    return getattr(importlib.import_module(module), attr)


def method_options(name: str) -> list[str]:
    """The options a user may set for ``name``: the constructor's, minus those the entry fixes."""
    params = set(inspect.signature(method_class(name).__init__).parameters) - {"self", "clip"}
    return sorted(params - set(method_entry(name).fixed))


def frame_count_error(name: str, frames: int, options: dict[str, Any] | None = None) -> str | None:
    """Why method ``name`` (with ``options`` and its entry's fixed ones) cannot take ``frames``-frame videos."""
    return method_class(name).frame_count_error(frames, {**(options or {}), **method_entry(name).fixed})


def create_method(name: str, clip: nn.Module, options: dict[str, Any] | None = None) -> RetrievalMethod:
    """Build a catalogued method from its name and options, rejecting unknown or fixed options by name."""
    entry = method_entry(name)
    options = dict(options or {})
    clash = sorted(set(options) & set(entry.fixed))
    if clash:
        raise ValueError(f"method {name!r} fixes option(s) {', '.join(clash)}; do not pass them")
    accepted = method_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "(none)"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {name!r}; valid: {valid}")
    return method_class(name)(clip, **options, **entry.fixed)

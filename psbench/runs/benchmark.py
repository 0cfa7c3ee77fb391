"""The whole benchmark of one protocol: every method (and ablation) x every seed, resumable.

A (method, seed) whose finished run — ``metrics.json`` with the same protocol hash — already exists
under the runs directory is not redone, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psbench.catalog import bench_methods
from psbench.files import jsonio
from psbench.protocol import RunConfig, load_protocol, resolve
from psbench.runs.dirs import list_runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRun:
    method: str
    seed: int
    sets: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.sets)
        return f"{self.method} s{self.seed}" + (f" [{extra}]" if extra else "")


def plan(
    protocol: str, methods: tuple[str, ...] | None = None, seeds: list[int] | None = None, zero_shot: bool = True
) -> list[PlannedRun]:
    """The runs of a benchmark: the zero-shot mean-pool row (one seed: no training, no randomness), then all."""
    proto = load_protocol(protocol)
    methods = tuple(bench_methods()) if methods is None else methods
    seeds = list(seeds or proto["seeds"])
    runs = [PlannedRun("meanpool", seeds[0], (("train.epochs", 0),))] if zero_shot else []
    runs += [PlannedRun(m, s) for m in methods for s in seeds]
    return runs


def finished_runs(runs_dir: Path, with_weights: bool = False) -> dict[tuple[str, ...], Path]:
    """(method, seed, protocol hash[, weights sha256]) -> run directory, for every finished run under ``runs_dir``."""
    done: dict[tuple[str, ...], Path] = {}
    for run_dir in list_runs([runs_dir]):
        m = jsonio.read_json(run_dir / "metrics.json")
        key: tuple[Any, ...] = (m["method"], int(m["seed"]), m["hashes"]["protocol"])
        done[(*key, m["hashes"].get("weights", "unrecorded")) if with_weights else key] = run_dir
    return done


def run_benchmark(
    protocol: str,
    runs_dir: Path,
    run_one: Callable[[RunConfig], Path],
    planned: list[PlannedRun],
    on_skip: Callable[[PlannedRun, Path], None] | None = None,
    weights_of: Callable[[RunConfig], str] | None = None,
) -> list[Path]:
    """Run every planned run that has no finished twin (same method, seed and protocol hash, and, with
    ``weights_of`` (config -> weights sha256), the same weights: a run on other weights is never reused)."""
    proto = load_protocol(protocol)
    done = finished_runs(runs_dir, with_weights=weights_of is not None)
    out: list[Path] = []
    for item in planned:
        cfg = resolve(proto, item.method, item.seed, dict(item.sets))
        key: tuple[Any, ...] = (item.method, item.seed, cfg.protocol_hash())
        if weights_of is not None:
            key = (*key, weights_of(cfg))
        if key in done:
            log.info("skip %s: finished in %s", item.label, done[key])
            if on_skip:
                on_skip(item, done[key])
            out.append(done[key])
            continue
        run_dir = run_one(cfg)
        done[key] = run_dir
        out.append(run_dir)
    return out

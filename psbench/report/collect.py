"""Load finished runs and group them into report rows, never merging different hashes.

A row (:class:`Group`) holds the seeds of one (protocol, method, zero-shot?) whose runs share the
protocol hash, the test-data hash AND the inputs loaded from disk (sha256 of the CLIP weights file and
of the tokenizer vocabulary). Runs of the same protocol and method with different hashes are SPLIT into
separate, labelled rows (not refused): a ``--set`` variant, other weights or a re-generated test set is a
legitimate result, but it is a different experiment. Each split produces a :class:`Conflict` message
naming the hashes and run directories; the report prints them. A row's seeds are distinct: a seed
repeated within a row is counted once (:class:`RepeatedSeed` names the run directories left out).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psbench.files import jsonio
from psbench.protocol import SCORE_NEUTRAL_KEYS
from psbench.retrieval.metrics import (
    DIRECTIONS,
    METRIC_KEYS,
    QueryRanks,
    metrics_from_ranks,
    per_query_recall,
    rank_positions,
)
from psbench.runs.dirs import list_runs
from psbench.runs.record import UNRECORDED, open_run

log = logging.getLogger(__name__)

METRICS = METRIC_KEYS  # the report's name for the one list of metric keys


@dataclass
class Run:
    """One finished run directory: its records, loaded eagerly except the per-query ranks."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    environment: dict[str, Any]
    evals: list[dict[str, Any]] = field(default_factory=list)
    _ranks: dict[str, Any] | None = None

    @property
    def protocol(self) -> str:
        return str(self.metrics["protocol"])

    @property
    def method(self) -> str:
        return str(self.metrics["method"])

    @property
    def seed(self) -> int:
        return int(self.metrics["seed"])

    @property
    def protocol_hash(self) -> str:
        return str(self.metrics["hashes"]["protocol"])

    @property
    def test_data_hash(self) -> str:
        return str(self.metrics["hashes"]["test_data"])

    @property
    def weights_hash(self) -> str:
        """sha256 of the CLIP weights file (``random`` without one; ``unrecorded`` for older runs)."""
        return str(self.metrics["hashes"].get("weights") or self.config.get("hashes", {}).get("weights") or UNRECORDED)

    @property
    def tokenizer_hash(self) -> str:
        """sha256 of the tokenizer vocabulary the run read (``unrecorded`` for older runs)."""
        hashes = self.metrics["hashes"]
        return str(hashes.get("tokenizer_vocab") or self.config.get("hashes", {}).get("tokenizer_vocab") or UNRECORDED)

    @property
    def identity(self) -> tuple[Any, ...]:
        """Everything that must be equal for two runs to be seeds of one row."""
        return (
            self.protocol,
            self.method,
            self.zero_shot,
            self.protocol_hash,
            self.test_data_hash,
            self.weights_hash,
            self.tokenizer_hash,
        )

    @property
    def epochs(self) -> int:
        return int(self.metrics.get("train", {}).get("epochs_run", 0))

    @property
    def zero_shot(self) -> bool:
        return self.epochs == 0

    @property
    def tie_rule(self) -> str:
        return str(self.metrics.get("tie_rule") or self.config.get("config", {}).get("test", {}).get("tie_rule"))

    @property
    def scoring_key(self) -> tuple[Any, ...]:
        """What must be equal for two runs to be compared query by query (the methods may differ)."""
        test = self.config.get("config", {}).get("test", {})
        return (
            self.protocol,
            self.metrics.get("protocol_version"),
            self.test_data_hash,
            self.weights_hash,
            self.tokenizer_hash,
            self.tie_rule,
            self.metrics.get("v2t_rule", test.get("v2t_rule")),
            bool(self.metrics.get("dsl", test.get("dsl", False))),
        )

    def ranks(self, direction: str) -> QueryRanks:
        if self._ranks is None:
            path = self.path / "ranks.json"
            if not path.is_file():
                raise FileNotFoundError(f"{self.path}: no ranks.json (per-query ranks are needed for CIs and tests)")
            self._ranks = jsonio.read_json(path)
        return QueryRanks.from_dict(self._ranks[direction])

    def relation_margins(self) -> tuple[list[str], np.ndarray] | None:
        """(group names, (G, 4) v2t margins) of the relation probe; None when the test set has no groups."""
        self.ranks("t2v")
        assert self._ranks is not None
        rel = self._ranks.get("relation")
        if not rel:
            return None
        return list(rel["groups"]), np.asarray(rel["margins"], dtype=np.float64)

    def caption_video(self) -> list[int] | None:
        self.ranks("t2v")
        assert self._ranks is not None
        return self._ranks.get("caption_video")

    def train_log(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(step records, epoch summaries) from train_log.jsonl; empty lists if the run did not train."""
        path = self.path / "train_log.jsonl"
        steps: list[dict[str, Any]] = []
        epochs: list[dict[str, Any]] = []
        if not path.is_file():
            return steps, epochs
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: skipping a malformed line (the run may have been interrupted)", path)
                continue
            if "epoch_summary" in record:
                epochs.append(record["epoch_summary"])
            else:
                steps.append(record)
        return steps, epochs


def load_run(path: Path) -> Run:
    """metrics.json, config.json, environment.json and every eval_*.json of one finished run directory
    (read by :func:`psbench.runs.record.open_run`, as every command reads a run)."""
    record = open_run(path)
    if record.metrics is None:
        raise FileNotFoundError(f"{path} is not a finished run (no metrics.json)")
    return Run(record.path, record.metrics, record.record, record.environment, record.evals)


def load(paths: Iterable[Path], protocols: Iterable[str] | None = None) -> list[Run]:
    """Every finished run under ``paths`` (optionally only the named protocols), in a stable order."""
    wanted = set(protocols or [])
    runs = [load_run(p) for p in list_runs(paths)]
    runs = [r for r in runs if not wanted or r.protocol in wanted]
    return sorted(runs, key=lambda r: (r.protocol, r.method, r.zero_shot, r.seed, str(r.path)))


@dataclass
class Conflict:
    """Runs of one protocol and method that were split because their hashes differ."""

    protocol: str
    method: str
    groups: list[tuple[str, str, str, list[str]]]  # (protocol hash, test-data hash, weights sha256, run dirs)

    def message(self) -> str:
        parts = [
            f"protocol hash {ph} / test-data hash {dh} / weights sha256 {wh[:16]} ({len(dirs)} run(s): "
            f"{', '.join(dirs)})"
            for ph, dh, wh, dirs in self.groups
        ]
        return (
            f"{self.protocol} / {self.method}: runs with different hashes were NOT merged; they are separate rows: "
            + "; ".join(parts)
        )


@dataclass
class RepeatedSeed:
    """One seed found in several runs of one row: the first run (by directory name) is used, the rest left out."""

    protocol: str
    label: str
    seed: int
    used: str
    left_out: list[str]
    identical: bool  # whether the left-out runs recorded the same t2v/v2t metrics as the used one

    def message(self) -> str:
        same = "identical metrics" if self.identical else "DIFFERENT metrics (the runs are not reproducible)"
        return (
            f"{self.protocol} / {self.label}: seed {self.seed} appears in {1 + len(self.left_out)} runs ({same}); "
            f"a repeated seed is not another seed, so the row uses {self.used} and leaves out "
            + ", ".join(self.left_out)
        )


@dataclass
class Group:
    """The seeds of one report row: same protocol, method, zero-shot flag, protocol hash, test-data hash,
    weights sha256 and tokenizer-vocabulary sha256; one run per seed."""

    protocol: str
    method: str
    zero_shot: bool
    protocol_hash: str
    test_data_hash: str
    weights_hash: str
    tokenizer_hash: str
    runs: list[Run]
    variant_parts: list[str] = field(default_factory=list)  # what differs from same-method rows (set when split)

    @property
    def variant(self) -> str:
        return ", ".join(self.variant_parts)

    @property
    def label(self) -> str:
        """One-line label: ``method (key=value, ...)`` when the row was split from others of its method."""
        return f"{self.method} ({self.variant})" if self.variant_parts else self.method

    @property
    def cell_label(self) -> str:
        """The label for a table cell: the method, then one line per differing setting."""
        return "\n".join([self.method, *self.variant_parts])

    @property
    def kind(self) -> str:
        epochs = sorted({r.epochs for r in self.runs})
        return "zero-shot" if self.zero_shot else f"trained ({'/'.join(map(str, epochs))} ep)"

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def scoring_key(self) -> tuple[Any, ...]:
        return self.runs[0].scoring_key

    @property
    def tie_rule(self) -> str:
        return self.runs[0].tie_rule

    def metric_values(self, direction: str, metric: str) -> np.ndarray:
        """The recorded metric (metrics.json) of each seed."""
        return np.array([float(r.metrics[direction][metric]) for r in self.runs])

    def per_query(self, direction: str, k: int | None) -> np.ndarray:
        """Per-query R@k contribution (k given) or 0-based rank position (k None), averaged over seeds.

        All seeds of a group share the test-data hash, so their queries are the same and in the same order.
        """
        arrays = []
        for run in self.runs:
            ranks = run.ranks(direction)
            arrays.append(per_query_recall(ranks, k, run.tie_rule) if k else rank_positions(ranks, run.tie_rule))
        sizes = {a.shape for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"{self.label}: seeds have different query counts {sorted(sizes)} despite equal hashes")
        return np.mean(arrays, axis=0)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _variant_labels(groups: list[Group], max_keys: int = 4) -> None:
    """Label each group of one (protocol, method, kind) by what differs between them: the config values,
    the test data, or (when neither does) the protocol hash."""
    if len(groups) < 2:
        return
    flats = [_flatten(g.runs[0].config.get("config", {})) for g in groups]
    keys = sorted(set().union(*flats))
    differing = [
        k
        for k in keys
        if not k.startswith(SCORE_NEUTRAL_KEYS) and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1
    ]
    data_differs = len({g.test_data_hash for g in groups}) > 1
    weights_differ = len({g.weights_hash for g in groups}) > 1
    vocab_differs = len({g.tokenizer_hash for g in groups}) > 1
    for group, flat in zip(groups, flats, strict=True):
        parts = [f"{k}={flat.get(k)}" for k in differing[:max_keys]]
        if len(differing) > max_keys:
            parts.append(f"+{len(differing) - max_keys} more settings")
        if data_differs:
            parts.append(f"test data {group.test_data_hash[:8]}")
        if weights_differ:
            parts.append(f"weights {group.weights_hash[:8]}")
        if vocab_differs:
            parts.append(f"tokenizer vocab {group.tokenizer_hash[:8]}")
        if not parts or (not differing and len({g.protocol_hash for g in groups}) > 1 and not weights_differ):
            parts.append(f"protocol {group.protocol_hash[:8]}")
        group.variant_parts = parts


def _one_run_per_seed(runs: list[Run]) -> tuple[list[Run], list[tuple[int, Run, list[Run]]]]:
    """The runs with distinct seeds (the first directory of each seed), and each repeated seed's leftovers."""
    by_seed: dict[int, list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.seed, str(r.path))):
        by_seed[run.seed].append(run)
    kept = [members[0] for members in by_seed.values()]
    repeated = [(seed, members[0], members[1:]) for seed, members in by_seed.items() if len(members) > 1]
    return kept, repeated


def _same_metrics(a: Run, b: Run) -> bool:
    return all(a.metrics[d] == b.metrics[d] for d in DIRECTIONS)


def group_runs(runs: list[Run]) -> tuple[list[Group], list[Conflict], list[RepeatedSeed]]:
    """Rows for the report, one conflict per (protocol, method) whose runs had to be split, and every
    seed repeated within a row (counted once; the extra run directories are named, never averaged in)."""
    by_hashes: dict[tuple[Any, ...], list[Run]] = defaultdict(list)
    for run in runs:
        by_hashes[run.identity].append(run)
    groups = []
    leftovers: list[tuple[Group, int, Run, list[Run]]] = []
    for (protocol, method, zero_shot, *hashes), members in by_hashes.items():
        kept, repeated = _one_run_per_seed(members)
        group = Group(protocol, method, zero_shot, *hashes, runs=kept)
        groups.append(group)
        leftovers.extend((group, seed, used, rest) for seed, used, rest in repeated)
    by_method: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for group in groups:
        by_method[(group.protocol, group.method)].append(group)
    conflicts = []
    for (protocol, method), members in by_method.items():
        # Zero-shot and trained rows always differ in hash (train.epochs); that split is expected, not a conflict.
        for zero_shot in (False, True):
            same_kind = [g for g in members if g.zero_shot == zero_shot]
            _variant_labels(same_kind)
            if len(same_kind) > 1:
                entries = [
                    (g.protocol_hash, g.test_data_hash, g.weights_hash, [str(r.path) for r in g.runs])
                    for g in same_kind
                ]
                conflicts.append(Conflict(protocol, method, entries))
                log.info(conflicts[-1].message())
    repeats = [
        RepeatedSeed(
            g.protocol,
            g.label,
            seed,
            str(used.path),
            [str(r.path) for r in rest],
            all(_same_metrics(used, r) for r in rest),
        )
        for g, seed, used, rest in leftovers
    ]
    for repeat in repeats:
        log.warning(repeat.message())
    groups.sort(key=lambda g: (g.protocol, g.zero_shot, g.method, g.variant))
    return groups, conflicts, repeats


def check_recorded_metrics(run: Run, tol: float = 1e-6) -> list[str]:
    """Recompute each run's metrics from ranks.json; list any disagreement with metrics.json."""
    problems = []
    for direction in DIRECTIONS:
        recomputed = metrics_from_ranks(run.ranks(direction), run.tie_rule)
        for key, value in recomputed.items():
            recorded = run.metrics[direction].get(key)
            if recorded is None or abs(float(recorded) - value) > tol * max(1.0, abs(value)):
                problems.append(f"{run.path}: {direction} {key} recorded {recorded}, recomputed from ranks {value:.6g}")
    return problems

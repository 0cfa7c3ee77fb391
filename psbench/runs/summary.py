"""Collect finished runs into a table: one row per (protocol, method, variant), mean ± std over distinct seeds.

A row's identity is the protocol, the method, the epochs run, the protocol hash, the test-data hash and
the sha256 of the CLIP weights file and of the tokenizer vocabulary: runs that differ in any of them are
never merged. The seeds of a row must be distinct (:class:`RepeatedSeedError` otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from psbench.runs.dirs import list_runs
from psbench.runs.record import UNRECORDED, open_run

METRIC_COLUMNS = ["R1", "R5", "R10", "MdR", "MnR"]
ROW_KEYS = ["protocol", "method", "epochs", "protocol_hash", "test_data_hash", "weights_hash", "tokenizer_hash"]


class RepeatedSeedError(ValueError):
    """A table row would count one seed more than once; the message names the run directories."""


def load_runs(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per finished run, with flattened t2v/v2t metrics, hashes and the run directory."""
    rows: list[dict[str, Any]] = []
    for run_dir in list_runs(paths):
        run = open_run(run_dir)
        m = run.metrics
        assert m is not None  # list_runs lists directories with metrics.json
        hashes = {**run.hashes, **m["hashes"]}
        row: dict[str, Any] = {
            "run_dir": str(run_dir),
            "protocol": m["protocol"],
            "protocol_version": m.get("protocol_version"),
            "method": m["method"],
            "seed": m["seed"],
            "epochs": m.get("train", {}).get("epochs_run", 0),
            "protocol_hash": m["hashes"]["protocol"],
            "test_data_hash": m["hashes"]["test_data"],
            "weights_hash": hashes.get("weights") or UNRECORDED,
            "tokenizer_hash": hashes.get("tokenizer_vocab") or UNRECORDED,
            "order_accuracy": m.get("order_accuracy"),
            "train_seconds": m.get("train_seconds"),
        }
        for direction in ("t2v", "v2t"):
            for key in METRIC_COLUMNS:
                row[f"{direction}_{key}"] = m[direction][key]
        rows.append(row)
    return pd.DataFrame(rows)


def repeated_seeds(runs: pd.DataFrame) -> list[str]:
    """One message per (row, seed) that appears in more than one run, naming the run directories."""
    if runs.empty:
        return []
    messages = []
    for key, group in runs.groupby([*ROW_KEYS, "seed"], dropna=False):
        if len(group) > 1:
            protocol, method, epochs, *_, seed = key
            dirs = ", ".join(sorted(group["run_dir"]))
            messages.append(f"{protocol} / {method} ({epochs} epochs): seed {seed} in {len(group)} runs: {dirs}")
    return messages


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per row identity (:data:`ROW_KEYS`), with the seed count.

    Raises :class:`RepeatedSeedError` if a row would contain a seed twice (a repeated seed is not a seed).
    """
    if runs.empty:
        return runs
    repeated = repeated_seeds(runs)
    if repeated:
        raise RepeatedSeedError(
            "repeated seeds: a row's seeds must be distinct (remove or move the extra run directories): "
            + "; ".join(repeated)
        )
    value_cols = [c for c in runs.columns if c.startswith(("t2v_", "v2t_"))] + ["order_accuracy"]
    grouped = runs.groupby(ROW_KEYS, dropna=False)
    mean = grouped[value_cols].mean()
    std = grouped[value_cols].std(ddof=1).fillna(0.0)
    out = mean.join(std.add_suffix("_std"))
    out["seeds"] = grouped.size()
    return out.reset_index()


def format_cell(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.1f} ± {std:.1f}" if seeds > 1 else f"{mean:.1f}"

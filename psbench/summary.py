"""Collect finished runs into a table: one row per (protocol, method, variant), mean ± std over seeds."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from psbench.runs import list_runs, read_json

METRIC_COLUMNS = ["R1", "R5", "R10", "MdR", "MnR"]


def load_runs(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per finished run, with flattened t2v/v2t metrics, hashes and the run directory."""
    rows: list[dict[str, Any]] = []
    for run_dir in list_runs(paths):
        m = read_json(run_dir / "metrics.json")
        row: dict[str, Any] = {
            "run_dir": str(run_dir),
            "protocol": m["protocol"],
            "protocol_version": m.get("protocol_version"),
            "method": m["method"],
            "seed": m["seed"],
            "epochs": m.get("train", {}).get("epochs_run", 0),
            "protocol_hash": m["hashes"]["protocol"],
            "test_data_hash": m["hashes"]["test_data"],
            "order_accuracy": m.get("order_accuracy"),
            "train_seconds": m.get("train_seconds"),
        }
        for direction in ("t2v", "v2t"):
            for key in METRIC_COLUMNS:
                row[f"{direction}_{key}"] = m[direction][key]
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (protocol, method, protocol hash, data hash), with the seed count."""
    if runs.empty:
        return runs
    keys = ["protocol", "method", "epochs", "protocol_hash", "test_data_hash"]
    value_cols = [c for c in runs.columns if c.startswith(("t2v_", "v2t_"))] + ["order_accuracy"]
    grouped = runs.groupby(keys, dropna=False)
    mean = grouped[value_cols].mean()
    std = grouped[value_cols].std(ddof=1).fillna(0.0)
    out = mean.join(std.add_suffix("_std"))
    out["seeds"] = grouped.size()
    return out.reset_index()


def format_cell(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.1f} ± {std:.1f}" if seeds > 1 else f"{mean:.1f}"

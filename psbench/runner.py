"""One run, end to end: resolve paths, build the model, train, select, evaluate, record.

Everything a run produces lands in its own run directory (see ``psbench.runs``); the metrics file
is written last, so a directory without ``metrics.json`` is an unfinished run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import baselines  # noqa: F401 - registers the baselines
from psbench import backbone
from psbench.data.compress import read_compress_recipe
from psbench.data.datasets import load_split
from psbench.data.loader import VideoCaptionDataset, make_train_loader
from psbench.data.split import RetrievalSplit
from psbench.data.verify import require_videos
from psbench.evaluate import evaluate_split, frame_spec
from psbench.method import RetrievalMethod, create_method
from psbench.progress import Progress, SilentProgress
from psbench.protocol import RunConfig
from psbench.runs import (
    METRICS_SCHEMA_VERSION,
    atomic_torch_save,
    atomic_write_json,
    create_run_dir,
    environment,
    hash_strings,
)
from psbench.train import seed_everything, train

log = logging.getLogger(__name__)

try:  # Prompt Switch registers itself on import
    import psbench.promptswitch  # noqa: F401
except ImportError:  # pragma: no cover - only while the module is being written
    log.debug("psbench.promptswitch not importable")


@dataclass
class RunPaths:
    data_root: Path
    weights: Path | None


def resolve_paths(cfg: RunConfig, data_root: Path | None, weights: Path | None) -> RunPaths:
    """Data root: CLI flag, else the protocol default. Weights: CLI flag, else the protocol's (under root)."""
    root = Path(data_root) if data_root else Path(cfg.data.root)
    if weights is None and cfg.backbone.weights:
        w = Path(cfg.backbone.weights)
        weights = w if w.is_absolute() else root / w
    return RunPaths(root, Path(weights) if weights else None)


def data_hash(split: RetrievalSplit) -> str:
    """Hash of what a split contains: ids, captions, and each video file's name and size."""
    parts = [split.name, *split.video_ids, *(f"{c.video_id}\t{c.text}" for c in split.captions)]
    for vid in split.video_ids:
        path = split.video_paths.get(vid)
        size = path.stat().st_size if path is not None and path.exists() else -1
        parts.append(f"{vid}:{path.name if path else ''}:{size}")
    return hash_strings(parts)


def build_method(cfg: RunConfig, weights: Path | None) -> RetrievalMethod:
    clip = backbone.create_clip(cfg.backbone.arch, weights)
    return create_method(cfg.method, clip, cfg.options)


def run(
    cfg: RunConfig,
    runs_dir: Path,
    data_root: Path | None = None,
    weights: Path | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    command: str = "",
) -> Path:
    """Train and evaluate one (protocol, method, seed); return the run directory."""
    progress = progress or SilentProgress()
    dev = torch.device(device)
    paths = resolve_paths(cfg, data_root, weights)
    if paths.weights is not None and not paths.weights.is_file():
        raise FileNotFoundError(
            f"CLIP weights not found: {paths.weights} (pass --weights PATH, or for the synthetic protocol run "
            "`psbench data pretrain-clip` first)"
        )
    splits = {"test": cfg.data.test_split}
    if cfg.train.epochs > 0:
        splits["train"] = cfg.data.train_split
        if cfg.train.selection == "val":
            if not cfg.data.val_split:
                raise ValueError(f"protocol {cfg.protocol}: selection 'val' but the dataset has no validation split")
            splits["val"] = cfg.data.val_split
    loaded: dict[str, RetrievalSplit] = {}
    skipped: dict[str, list[str]] = {}
    for role, name in splits.items():
        full = load_split(cfg.data, paths.data_root, name)
        loaded[role] = require_videos(full, cfg.data.skip_missing)  # refuses an incomplete dataset unless skipping
        skipped[role] = sorted(set(full.video_ids) - set(loaded[role].video_ids))
    test_split, train_split, val_split = loaded["test"], loaded.get("train"), loaded.get("val")

    run_dir = create_run_dir(runs_dir, cfg.protocol, cfg.method, cfg.seed)
    seed_everything(cfg.seed)
    method = build_method(cfg, paths.weights)
    hashes = {"protocol": cfg.protocol_hash(), "test_data": data_hash(test_split)}
    if train_split is not None:
        hashes["train_data"] = data_hash(train_split)
    record: dict[str, Any] = {
        "config": cfg.to_dict(),
        "hashes": hashes,
        "data_root": str(paths.data_root),
        "weights": str(paths.weights) if paths.weights else None,
        "command": command,
        "method_facts": method.extra_state(),
        "skipped_missing_videos": skipped,
        "compress_recipe": read_compress_recipe(paths.data_root / cfg.data.video_dir),
        "num_parameters": {g: sum(p.numel() for _, p in ps) for g, ps in method.parameter_groups().items()},
    }
    atomic_write_json(run_dir / "config.json", record)
    atomic_write_json(run_dir / "environment.json", environment(dev))
    log.info("run directory %s", run_dir)

    tokenizer_train = backbone.tokenizer_for(method.clip, cfg.train.max_words)
    tokenizer_test = backbone.tokenizer_for(method.clip, cfg.test.max_words)
    started = time.time()
    train_summary: dict[str, Any] = {"epochs_run": 0, "steps": 0, "selection": "none (zero-shot)"}
    if train_split is not None:
        dataset = VideoCaptionDataset(
            train_split,
            frame_spec(cfg.train.frames, cfg.train.sampler, cfg.train.segments, method),
            cfg.train.transform,
            cfg.train.resolution,
            tokenizer_train,
            cfg.seed,
        )
        loader = make_train_loader(
            dataset, cfg.train.batch_size, cfg.train.num_workers, cfg.seed, twin_pairs=cfg.train.twin_pairs
        )
        select_split = {"val": val_split, "test_official": test_split}.get(cfg.train.selection)

        def validate() -> float:
            assert select_split is not None
            res = evaluate_split(method, select_split, cfg.test, tokenizer_test, dev)
            return float(res.metrics["t2v"]["R1"])

        with progress.task(f"train {cfg.method} s{cfg.seed}", cfg.train.epochs * len(loader)) as task:
            result = train(
                method,
                loader,
                cfg.train,
                run_dir,
                dev,
                validate=validate if select_split is not None else None,
                on_step=lambda step, total, loss: task.advance(1, loss=loss),
            )
        if result.selection != "last":
            atomic_torch_save(
                {"model": method.state_dict(), "epoch": result.selected_epoch}, run_dir / "model_selected.pt"
            )
        train_summary = {
            "epochs_run": result.epochs_run,
            "steps": result.steps,
            "selected_epoch": result.selected_epoch,
            "selection": result.selection,
            "history": result.history,
        }
    train_seconds = time.time() - started
    method.to(dev)
    evaluation = evaluate_split(method, test_split, cfg.test, tokenizer_test, dev, progress)
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "protocol": cfg.protocol,
        "protocol_version": cfg.version,
        "method": cfg.method,
        "seed": cfg.seed,
        "split": cfg.data.test_split,
        "hashes": hashes,
        "train": train_summary,
        "train_seconds": train_seconds,
        "eval_seconds": time.time() - started - train_seconds,
        **evaluation.metrics,
    }
    atomic_write_json(run_dir / "ranks.json", evaluation.ranks)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return run_dir

"""One run, end to end: resolve paths, build the model, train, select, evaluate, record.

Everything a run produces lands in its own run directory (see ``psbench.runs.dirs``); the metrics file
is written last, so a directory without ``metrics.json`` is an unfinished run, which
:func:`resume` continues from its last checkpoint. Under torchrun every process runs this code;
rank 0 alone creates the run directory and writes records (see ``docs/distributed.md``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from psbench import distributed
from psbench.backbone import clip as backbone
from psbench.catalog import create_method, frame_count_error
from psbench.data.datasets import GENERATED, expected_videos, load_split
from psbench.data.loader import (
    VideoCaptionDataset,
    make_train_loader,
    pixels_for,
    prepare_frame_counts,
    usable_workers,
)
from psbench.data.prepare.compress import read_compress_recipe
from psbench.data.prepare.verify import require_videos
from psbench.data.split import RetrievalSplit
from psbench.files import atomic, jsonio
from psbench.method import RetrievalMethod
from psbench.progress import Progress, SilentProgress
from psbench.protocol import RunConfig
from psbench.retrieval.evaluate import evaluate_split, frame_spec
from psbench.runs.dirs import METRICS_SCHEMA_VERSION, RunDirError, create_run_dir, environment, hash_strings
from psbench.runs.record import RunInputs, RunRecord, absolute, input_hashes, open_run
from psbench.train.loop import deterministic_mode, recipe_facts, seed_everything, train

log = logging.getLogger(__name__)

#: where a run reads its data and weights (absolute paths; recorded in config.json)
RunPaths = RunInputs

#: ``backbone.weights = "random"`` asks for a randomly initialised backbone on purpose (tests, cost studies)
RANDOM_WEIGHTS = "random"

WHERE_TO_GET = (
    "For the synthetic protocol run `psbench data synth` and `psbench data pretrain-clip` (or `make demo`); for "
    "the relation probe `psbench data probe` and `psbench data pretrain-clip --root data/relation-probe` "
    "(or `make probe`).",
    "Real datasets: download the videos and the standard annotation files and point --data-root at them; "
    "CLIP weights: an open_clip state dict of OpenAI ViT-B/32 (README, 'Using real CLIP weights and real data').",
)


def resolve_paths(cfg: RunConfig, data_root: Path | None, weights: Path | None) -> RunPaths:
    """Data root: CLI flag, else the protocol default. Weights: CLI flag, else the protocol's (under root).

    Both are made absolute here, so the run record does not depend on the directory it was started from.
    """
    root = absolute(data_root if data_root else cfg.data.root)
    if weights is None and cfg.backbone.weights and cfg.backbone.weights != RANDOM_WEIGHTS:
        w = Path(cfg.backbone.weights)
        weights = w if w.is_absolute() else root / w
    return RunPaths(root, absolute(weights) if weights else None)


def data_hash(split: RetrievalSplit) -> str:
    """Hash of what a split contains: ids, captions, and each video file's name and size."""
    parts = [split.name, *split.video_ids, *(f"{c.video_id}\t{c.text}" for c in split.captions)]
    for vid in split.video_ids:
        path = split.video_paths.get(vid)
        size = path.stat().st_size if path is not None and path.exists() else -1
        parts.append(f"{vid}:{path.name if path else ''}:{size}")
    return hash_strings(parts)


def build_method(
    cfg: RunConfig, weights: Path | None, trust_checkpoint: bool = False, adjusted: list[str] | None = None
) -> RetrievalMethod:
    """The run's method on its CLIP, with the protocol's training-recipe loss reduction set; ``adjusted``
    receives the weight interpolations the protocol allowed."""
    clip = backbone.create_clip(
        cfg.backbone.arch,
        weights,
        trust_checkpoint=trust_checkpoint,
        interpolate_pos_embed=cfg.backbone.interpolate_pos_embed,
        adjusted=adjusted,
    )
    method = create_method(cfg.method, clip, cfg.options)
    method.infonce_reduction = cfg.train.infonce_reduction
    return method


@dataclass
class RunOptions:
    """How to run (never what is measured): device, determinism, trust, the command line, progress."""

    device: str = "cpu"
    deterministic: bool = False
    trust_checkpoint: bool = False
    command: str = ""
    progress: Progress | None = None
    on_run_dir: Callable[[Path], None] | None = None  # told the new run directory once it exists


def load_splits(cfg: RunConfig, data_root: Path) -> tuple[dict[str, RetrievalSplit], dict[str, list[str]]]:
    """The test split, and the train (+ selection) splits when the run trains; plus skipped missing ids."""
    splits = {"test": cfg.data.test_split}
    if cfg.train.epochs > 0:
        splits["train"] = cfg.data.train_split
        if cfg.train.selection == "val":
            if not cfg.data.val_split:
                raise ValueError(f"protocol {cfg.protocol}: selection 'val' but the dataset has no validation split")
            splits["val"] = cfg.data.val_split
    loaded: dict[str, RetrievalSplit] = {}
    skipped: dict[str, list[str]] = {}
    missing: list[str] = []  # every missing file of every split, named in one error
    for role, name in splits.items():
        try:
            full = load_split(cfg.data, data_root, name)
        except FileNotFoundError as exc:
            if str(exc) not in missing:
                missing.append(str(exc))
            continue
        loaded[role] = require_videos(full, cfg.data.skip_missing)  # refuses an incomplete dataset unless skipping
        skipped[role] = sorted(set(full.video_ids) - set(loaded[role].video_ids))
    if missing:
        raise FileNotFoundError("; ".join(missing))
    return loaded, skipped


def _new_run_dir(runs_dir: Path, cfg: RunConfig) -> Path:
    """Rank 0 creates the run directory (probing that it is writable); every rank gets its path or the error."""
    path, error = None, None
    if distributed.is_main():
        try:
            path = str(create_run_dir(runs_dir, cfg.protocol, cfg.method, cfg.seed))
        except RunDirError as exc:
            error = str(exc)
    path, error = distributed.broadcast_object((path, error))
    if error is not None:
        raise RunDirError(error)
    return Path(path)


def run(
    cfg: RunConfig,
    runs_dir: Path,
    data_root: Path | None = None,
    weights: Path | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    command: str = "",
    deterministic: bool = False,
    trust_checkpoint: bool = False,
    on_run_dir: Callable[[Path], None] | None = None,
) -> Path:
    """Train and evaluate one (protocol, method, seed) in a new run directory; return it.

    ``on_run_dir(path)`` is called once the run directory exists (the CLI names it on Ctrl-C).
    """
    options = RunOptions(device, deterministic, trust_checkpoint, command, progress, on_run_dir)
    return _execute(cfg, resolve_paths(cfg, data_root, weights), options, runs_dir=runs_dir)


def resume(
    run_dir: Path,
    device: str = "cpu",
    progress: Progress | None = None,
    data_root: Path | None = None,
    trust_checkpoint: bool = False,
    command: str = "",
    weights: Path | None = None,
) -> Path:
    """Continue an interrupted run from its last checkpoint, in the same directory; return it.

    The run's recorded config, inputs and determinism setting are used; ``data_root`` / ``weights``
    replace the recorded paths (data or weights moved) and must hash to what the run recorded. A finished
    run (one with metrics.json) is refused.
    """
    run = open_run(run_dir, trust_checkpoint)
    if run.finished:
        raise RunDirError(f"{run.path} is a finished run (metrics.json exists); there is nothing to resume")
    paths = run.inputs(data_root, weights)
    deterministic = bool(run.record.get("determinism", {}).get("deterministic", False))
    options = RunOptions(device, deterministic, trust_checkpoint, command, progress)
    return _execute(run.config, paths, options, resumed=run)


def check_frame_counts(cfg: RunConfig) -> None:
    """ValueError naming the setting if the method cannot take the frames the protocol gives it (before any work:
    a test-frame error found after training would come too late)."""
    stages = {"test.frames": cfg.test.frames, **({"train.frames": cfg.train.frames} if cfg.train.epochs > 0 else {})}
    errors = [
        f"{key} = {frames}: {e}"
        for key, frames in stages.items()
        if (e := frame_count_error(cfg.method, frames, cfg.options))
    ]
    if errors:
        raise ValueError("; ".join(errors))


def _execute(
    cfg: RunConfig,
    paths: RunPaths,
    opts: RunOptions,
    runs_dir: Path | None = None,
    resumed: RunRecord | None = None,
) -> Path:
    here = distributed.init_from_env(opts.device)
    dev = distributed.process_device(opts.device)
    progress = (opts.progress if here.is_main else None) or SilentProgress()
    if cfg.train.epochs > 0:
        distributed.per_process_batch(cfg.train.batch_size, here.world_size)
    check_frame_counts(cfg)
    problems = [] if paths.weights is None or paths.weights.is_file() else [f"CLIP weights not found: {paths.weights}"]
    if paths.weights is None and cfg.backbone.weights != RANDOM_WEIGHTS:
        problems.append(
            f"protocol {cfg.protocol} needs pretrained CLIP weights for {cfg.backbone.arch}: pass --weights PATH"
        )
    try:
        loaded, skipped = load_splits(cfg, paths.data_root)
    except FileNotFoundError as exc:
        problems.insert(0, str(exc))
    if problems:
        raise FileNotFoundError("; ".join(problems) + f". {WHERE_TO_GET[cfg.data.dataset not in GENERATED]}")
    test_split, train_split, val_split = loaded["test"], loaded.get("train"), loaded.get("val")
    missing_test = len(skipped.get("test", []))
    test_videos = {  # in metrics.json and on screen: fewer than listed only with data.skip_missing
        "expected": expected_videos(cfg.data, paths.data_root, cfg.data.test_split),
        "listed": len(test_split.video_ids) + missing_test,
        "evaluated": len(test_split.video_ids),
        "missing": missing_test,
    }
    hashes = {"protocol": cfg.protocol_hash(), "test_data": data_hash(test_split)}
    if train_split is not None:
        hashes["train_data"] = data_hash(train_split)
    hashes.update(input_hashes(paths.weights))  # sha256 of the weights file and the tokenizer vocabulary
    resume_dir = resumed.path if resumed is not None else None
    if resumed is not None:
        resumed.check_hashes(hashes, paths)

    with deterministic_mode(opts.deterministic) as determinism:
        seed_everything(cfg.seed)
        adjusted: list[str] = []  # positional embeddings interpolated (only when the protocol allows it)
        method = build_method(cfg, paths.weights, opts.trust_checkpoint, adjusted)  # bad weights fail before writes
        if resume_dir is not None:
            run_dir = resume_dir
        else:
            assert runs_dir is not None
            run_dir = _new_run_dir(runs_dir, cfg)  # probes the runs directory: fails before training
            if opts.on_run_dir is not None:
                opts.on_run_dir(run_dir)
        if resume_dir is None and here.is_main:
            _write_run_record(run_dir, cfg, paths, opts, method, hashes, skipped, determinism, here, dev, adjusted)
        log.info("run directory %s", run_dir)
        started = time.time()
        train_summary: dict[str, Any] = {"epochs_run": 0, "steps": 0, "selection": "none (zero-shot)"}
        tokenizer_test = backbone.tokenizer_for(method.clip, cfg.test.max_words)
        if train_split is not None and not method.trainable:
            train_summary["selection"] = "none (the method has nothing to train)"
            log.info("%s has nothing to train: training skipped, the test split is evaluated", cfg.method)
        elif train_split is not None:
            train_summary = _train(
                cfg, method, train_split, val_split, test_split, run_dir, dev, progress, resumed=resumed
            )
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
        "test_videos": test_videos,
        "hashes": hashes,
        "train": train_summary,
        "train_seconds": train_seconds,
        "eval_seconds": time.time() - started - train_seconds,
        **evaluation.metrics,
    }
    if here.is_main:
        atomic.write_json(run_dir / "ranks.json", evaluation.ranks)
        atomic.write_json(run_dir / "metrics.json", metrics)
    distributed.barrier()
    return run_dir


def _write_run_record(
    run_dir: Path,
    cfg: RunConfig,
    paths: RunPaths,
    opts: RunOptions,
    method: RetrievalMethod,
    hashes: dict[str, str],
    skipped: dict[str, list[str]],
    determinism: dict[str, Any],
    here: distributed.DistInfo,
    dev: torch.device,
    weights_adjusted: list[str],
) -> None:
    """config.json (resolved config, hashes, how it ran) and environment.json."""
    record: dict[str, Any] = {
        "config": cfg.to_dict(),
        "hashes": hashes,
        "data_root": str(paths.data_root),
        "weights": str(paths.weights) if paths.weights else None,  # absolute; its sha256 is hashes["weights"]
        "tokenizer_vocab": str(backbone.tokenizer_vocab_path()),  # its sha256 is hashes["tokenizer_vocab"]
        "command": opts.command,
        "weights_adjusted": weights_adjusted,  # e.g. "positional_embedding 33x64 -> 32x64" (interpolated)
        "method_facts": {**method.extra_state(), "training_recipe": recipe_facts(cfg.train)},
        "skipped_missing_videos": skipped,
        "compress_recipe": read_compress_recipe(paths.data_root / cfg.data.video_dir),
        "num_parameters": {g: sum(p.numel() for _, p in ps) for g, ps in method.parameter_groups().items()},
        "determinism": determinism,
        "trust_checkpoint": opts.trust_checkpoint,
        # loader processes actually used: the protocol's num_workers capped by the CPUs this process may use
        "loader_workers": {
            "train": usable_workers(cfg.train.num_workers),
            "test": usable_workers(cfg.test.num_workers),
        },
        "distributed": {
            "world_size": here.world_size,
            "backend": here.backend,
            "effective_batch": cfg.train.batch_size,
            "per_process_batch": cfg.train.batch_size // here.world_size,
        },
    }
    atomic.write_json(run_dir / "config.json", record)
    atomic.write_json(run_dir / "environment.json", environment(dev))


def _train(
    cfg: RunConfig,
    method: RetrievalMethod,
    train_split: RetrievalSplit,
    val_split: RetrievalSplit | None,
    test_split: RetrievalSplit,
    run_dir: Path,
    dev: torch.device,
    progress: Progress,
    resumed: RunRecord | None,
) -> dict[str, Any]:
    """Build the (sharded) training loader, train (resuming when asked), save the selected weights."""
    here = distributed.info()
    dataset = VideoCaptionDataset(
        train_split,
        frame_spec(cfg.train.frames, cfg.train.sampler, cfg.train.segments, method),
        cfg.train.transform,
        cfg.train.resolution,
        backbone.tokenizer_for(method.clip, cfg.train.max_words),
        cfg.seed,
        skip_corrupt=cfg.train.skip_corrupt,
        pixels=pixels_for(dev),  # uint8 to a GPU, normalised there (same values)
    )
    with progress.task("frame counts of train videos", len(set(dataset.video_ids_needed()))) as task:
        frame_counts = prepare_frame_counts(dataset, cfg.train.num_workers, task.advance)  # probed once, reused
    loader = make_train_loader(
        dataset,
        cfg.train.batch_size,
        cfg.train.num_workers,
        cfg.seed,
        twin_pairs=cfg.train.twin_pairs,
        drop_last=cfg.train.drop_last,
        unique_videos=cfg.train.unique_videos,
        num_replicas=here.world_size,
        rank=here.rank,
    )
    select_split = {"val": val_split, "test_official": test_split}.get(cfg.train.selection)
    tokenizer_test = backbone.tokenizer_for(method.clip, cfg.test.max_words)

    def validate() -> float:
        assert select_split is not None
        res = evaluate_split(method, select_split, cfg.test, tokenizer_test, dev)
        return float(res.metrics["t2v"]["R1"])

    state = None
    if resumed is not None:
        state = resumed.load_training_state()  # the run's trust rule (psbench.runs.record)
        if state is None and here.is_main:
            resumed_from = {"resumed": {"from_checkpoint_epoch": None, "step": 0}}
            jsonio.append_jsonl(resumed.path / "train_log.jsonl", resumed_from)
            log.warning("%s has no checkpoint: training restarts from epoch 0", resumed.path)
    done = 0 if state is None else (int(state["epoch"]) + 1) * len(loader)
    with progress.task(f"train {cfg.method} s{cfg.seed}", cfg.train.epochs * len(loader)) as task:
        task.advance(done)
        result = train(
            method,
            loader,
            cfg.train,
            run_dir,
            dev,
            validate=validate if select_split is not None else None,
            on_step=lambda step, total, loss: task.advance(1, loss=loss),
            resume=state,
        )
    if result.selection != "last" and here.is_main:
        atomic.torch_save({"model": method.state_dict(), "epoch": result.selected_epoch}, run_dir / "model_selected.pt")
    return {
        "epochs_run": result.epochs_run,
        "steps": result.steps,
        "selected_epoch": result.selected_epoch,
        "selection": result.selection,
        "history": result.history,
        "skipped_corrupt_videos": {"count": len(result.skipped_videos), "videos": result.skipped_videos},
        "resumed_from_epoch": result.resumed_from_epoch,
        "world_size": here.world_size,
        "effective_batch": cfg.train.batch_size,
        "frame_counts": frame_counts,
        "pixels": pixels_for(dev),  # what the loader handed over: normalised floats, or uint8 normalised on the GPU
    }

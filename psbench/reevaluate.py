"""Re-evaluate a finished run from its checkpoint (``psbench eval RUN_DIR``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from psbench import backbone, distributed
from psbench.checkpoint import load_run_checkpoint
from psbench.data.datasets import load_split
from psbench.evaluate import evaluate_split
from psbench.progress import Progress
from psbench.protocol import RunConfig
from psbench.runner import build_method, data_hash
from psbench.runs import METRICS_SCHEMA_VERSION, atomic_write_json, read_json


def model_checkpoint(run_dir: Path) -> Path | None:
    """The weights the run selected: ``model_selected.pt`` if selection kept an earlier epoch, else the last."""
    for name in ("model_selected.pt", "checkpoint_last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def reevaluate(
    run_dir: Path,
    data_root: Path | None,
    device: str,
    progress: Progress | None = None,
    frame_order: str = "keep",
    trust_checkpoint: bool = False,
) -> Path:
    """Evaluate the run's selected weights again on its test split; ``eval_<time>.json`` records the result.

    The run's own checkpoint is always read with ``weights_only=True``; ``trust_checkpoint`` applies to
    the CLIP weights file the run recorded (a pickle or TorchScript archive needs it, as in ``run``).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    record = read_json(run_dir / "config.json")
    cfg = RunConfig.from_dict(record["config"])
    weights = Path(record["weights"]) if record.get("weights") else None
    method = build_method(cfg, weights, trust_checkpoint)
    ckpt = model_checkpoint(run_dir)
    if ckpt is not None:
        method.load_state_dict(load_run_checkpoint(ckpt)["model"])
    elif cfg.train.epochs > 0:
        raise FileNotFoundError(f"{run_dir}: no checkpoint found (the run did not finish an epoch)")
    here = distributed.init_from_env(device)  # under torchrun: rank 0 writes the result
    dev = distributed.process_device(device)
    method.to(dev)
    root = Path(data_root) if data_root else Path(record["data_root"])
    split = load_split(cfg.data, root, cfg.data.test_split)
    if data_hash(split) != record["hashes"]["test_data"]:
        raise ValueError(f"the test data under {root} differs from the data the run saw (data hash mismatch)")
    tokenizer = backbone.tokenizer_for(method.clip, cfg.test.max_words)
    result = evaluate_split(method, split, cfg.test, tokenizer, dev, progress, frame_order=frame_order)
    out = Path(
        distributed.broadcast_object(str(run_dir / f"eval_{datetime.now(UTC).strftime('%Y%m%dT%H%M%S_%fZ')}.json"))
    )
    if here.is_main:
        atomic_write_json(out, {"schema_version": METRICS_SCHEMA_VERSION, "checkpoint": str(ckpt), **result.metrics})
    distributed.barrier()
    return out

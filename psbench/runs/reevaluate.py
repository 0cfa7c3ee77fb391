"""Re-evaluate a finished run from its checkpoint (``psbench eval RUN_DIR``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from psbench import distributed
from psbench.backbone import clip as backbone
from psbench.data.datasets import load_split
from psbench.files import atomic
from psbench.progress import Progress
from psbench.retrieval.evaluate import evaluate_split
from psbench.runs.dirs import METRICS_SCHEMA_VERSION
from psbench.runs.record import input_hashes, open_run
from psbench.runs.runner import build_method, data_hash


def reevaluate(
    run_dir: Path,
    data_root: Path | None,
    device: str,
    progress: Progress | None = None,
    frame_order: str = "keep",
    trust_checkpoint: bool = False,
    weights: Path | None = None,
) -> Path:
    """Evaluate the run's selected weights again on its test split; ``eval_<time>.json`` records the result.

    The run is opened with :func:`psbench.runs.record.open_run`: ``trust_checkpoint`` applies to its CLIP
    weights file and its own checkpoint alike. ``data_root`` / ``weights`` replace the recorded paths and
    must hash to what the run recorded (test data, weights sha256, tokenizer vocabulary).
    """
    run = open_run(run_dir, trust_checkpoint)
    cfg = run.config
    inputs = run.inputs(data_root, weights)
    method = build_method(cfg, inputs.weights, trust_checkpoint)
    state = run.load_model_state()
    if state is not None:
        method.load_state_dict(state)
    here = distributed.init_from_env(device)  # under torchrun: rank 0 writes the result
    dev = distributed.process_device(device)
    method.to(dev)
    split = load_split(cfg.data, inputs.data_root, cfg.data.test_split)
    run.check_hashes({"test_data": data_hash(split), **input_hashes(inputs.weights)}, inputs)
    tokenizer = backbone.tokenizer_for(method.clip, cfg.test.max_words)
    result = evaluate_split(method, split, cfg.test, tokenizer, dev, progress, frame_order=frame_order)
    out = Path(
        distributed.broadcast_object(str(run.path / f"eval_{datetime.now(UTC).strftime('%Y%m%dT%H%M%S_%fZ')}.json"))
    )
    if here.is_main:
        ckpt = str(run.selected_checkpoint)
        atomic.write_json(out, {"schema_version": METRICS_SCHEMA_VERSION, "checkpoint": ckpt, **result.metrics})
    distributed.barrier()
    return out

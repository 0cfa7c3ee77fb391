"""Worker for tests/test_sharded_index.py, launched with ``python -m torch.distributed.run --nproc_per_node 2``.

Usage: sharded_index_worker.py INDEX_DIR QUERIES.pt OUT.pt. Every rank searches its share of the shards
(``sharded_index.distributed_topk``, gloo); rank 0 writes the merged (scores, indices) to OUT.pt.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from psbench import distributed
from psbench.backbone.clip import create_clip
from psbench.catalog import create_method
from psbench.retrieval.sharded_index import distributed_topk, open_sharded_index


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    index_dir, queries, out = (Path(a) for a in sys.argv[1:4])
    here = distributed.init_from_env("cpu")
    assert here.world_size == 2 and here.backend == "gloo", here
    method = create_method("meanpool", create_clip("psbench-tiny")).eval()
    text = torch.load(queries, weights_only=True)
    scores, indices = distributed_topk(open_sharded_index(index_dir), method, text, k=7, read_rows=50)
    if here.is_main:
        torch.save({"scores": scores, "indices": indices}, out)
    distributed.destroy()


if __name__ == "__main__":
    main()

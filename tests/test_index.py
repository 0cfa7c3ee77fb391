"""Saved video index: round trip, search through the engine, compatibility checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from psbench.backbone.clip import create_clip, tokenizer_for
from psbench.catalog import METHOD_TABLE, create_method
from psbench.retrieval import engine
from psbench.retrieval.index import (
    VideoIndex,
    VideoIndexError,
    check_compatible,
    load_index,
    model_fingerprint,
    save_index,
    search,
)
from psbench.runs.indexing import directory_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _index(name: str, n: int = 40) -> tuple[VideoIndex, torch.nn.Module]:
    torch.manual_seed(0)
    method = create_method(name, create_clip("psbench-tiny")).eval()
    with torch.inference_mode():
        frames = 6  # a multiple of Prompt Switch's segments
        video = method.encode_video(torch.randn(n, frames, 3, 32, 32), torch.ones(n, frames, dtype=torch.bool))
    ids = [f"video{i:03d}" for i in range(n)]
    meta = {"model_fingerprint": model_fingerprint(method), "max_words": 16}
    return VideoIndex(name, ids, video, meta), method


@pytest.mark.parametrize("name", list(METHOD_TABLE))  # every catalogued method, ablation, form and floor
def test_round_trip_gives_identical_search(tmp_path: Path, name: str) -> None:
    index, method = _index(name)
    path = tmp_path / "index.pt"
    save_index(index, path)
    loaded = load_index(path)
    assert loaded.method == name and loaded.video_ids == index.video_ids and loaded.meta == index.meta
    assert all(torch.equal(loaded.encoded[k], index.encoded[k]) for k in index.encoded)

    queries = ["a red ball", "a blue square moves left", "two cats"]
    result = search(loaded, method, queries, k=5)
    tokens = tokenizer_for(method.clip, 16)(queries)
    text = engine.encode_queries(method, tokens, batch_size=8, device="cpu")
    scores, indices = engine.topk(method, text, index.encoded, 5)
    assert torch.equal(result.scores, scores) and torch.equal(result.indices, indices)
    assert result.ids == [[index.video_ids[i] for i in row] for row in indices.tolist()]


def test_compatibility_checks(tmp_path: Path) -> None:
    index, method = _index("meanpool", n=8)
    check_compatible(index, method, "meanpool")
    with pytest.raises(VideoIndexError, match="built with method"):
        check_compatible(index, method, "xpool")
    other = create_method("meanpool", create_clip("psbench-tiny"))
    with pytest.raises(VideoIndexError, match="fingerprint"):
        check_compatible(index, other)
    with pytest.raises(VideoIndexError, match="video ids"):
        VideoIndex("meanpool", ["a"], index.encoded)
    bad = tmp_path / "bad.pt"
    torch.save({"format": 999}, bad)
    with pytest.raises(VideoIndexError, match="not a psbench index"):
        load_index(bad)


def test_directory_split(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.mp4", "a.avi", "sub/c.mkv", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    split = directory_split(tmp_path)
    assert split.video_ids == ["a", "b", "sub/c"] and split.captions == []
    assert split.video_paths["sub/c"] == tmp_path / "sub" / "c.mkv"
    with pytest.raises(FileNotFoundError):
        directory_split(tmp_path / "sub" / "missing")

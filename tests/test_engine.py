"""Engine: blocked scoring and top-k against the unblocked matrix, gallery order, Encoded helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from psbench.method import Encoded, RetrievalMethod
from psbench.retrieval.engine import (
    concat_encoded,
    encode_gallery,
    encode_queries,
    encoded_len,
    encoded_nbytes_per_item,
    merge_topk,
    score_matrix,
    slice_encoded,
    topk,
)
from tests.toys import ATTENTION_POOL_BOUND, D, F, ToyAttentionPool, ToyMeanPool


def dyadic(*shape: int, seed: int) -> Tensor:
    """Small multiples of 1/4: sums of products are exact in float32, whatever the summation order."""
    return torch.randint(-4, 5, shape, generator=torch.Generator().manual_seed(seed)).float() / 4


def toy_data(q: int, n: int, seed: int = 0) -> tuple[Encoded, Encoded]:
    text = {"text": dyadic(q, D, seed=seed)}
    frames = dyadic(n, F, D, seed=seed + 1)
    mask = torch.rand(n, F, generator=torch.Generator().manual_seed(seed + 2)) < 0.8
    mask[:, 0] = True
    return text, {"video": frames[:, 0], "frames": frames, "mask": mask}


@pytest.mark.parametrize("method_cls", [ToyMeanPool, ToyAttentionPool])
@pytest.mark.parametrize(("bq", "bv"), [(1, 1), (3, 7), (5, 4), (64, 64), (17, 1)])
def test_blocked_score_matrix_equals_unblocked(method_cls: type[RetrievalMethod], bq: int, bv: int) -> None:
    method = method_cls()
    text, video = toy_data(13, 22)
    with torch.inference_mode():
        full = method.similarity(text, video).float()  # (Q, N)
    blocked = score_matrix(method, text, video, block_queries=bq, block_videos=bv)
    assert blocked.dtype == torch.float32 and blocked.shape == (13, 22)
    if method_cls is ToyMeanPool:  # dyadic dot products: exact in float32 whatever the summation order
        assert torch.equal(blocked, full)
        return
    exact = exact_scores(method, text, video)
    for scores in (full, blocked):
        assert (scores.double() - exact).abs().max() <= ATTENTION_POOL_BOUND
    torch.testing.assert_close(blocked, full, rtol=0, atol=2 * ATTENTION_POOL_BOUND)


def exact_scores(method: RetrievalMethod, text: Encoded, video: Encoded) -> Tensor:
    """The toy similarity in float64 (Q, N): exact up to 1e-16, a reference for float32 error bounds."""
    as_double = {key: value.double() if value.is_floating_point() else value for key, value in video.items()}
    return method.similarity({"text": text["text"].double()}, as_double)


def stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Oracle: sort each row by (score desc, index asc) with numpy's lexsort."""
    values, indices = [], []
    for row in scores.numpy():
        order = np.lexsort((np.arange(row.size), -row))[:k]
        values.append(row[order])
        indices.append(order)
    return torch.from_numpy(np.stack(values)), torch.from_numpy(np.stack(indices))


@pytest.mark.parametrize("method_cls", [ToyMeanPool, ToyAttentionPool])
@pytest.mark.parametrize(("k", "bq", "bv"), [(1, 4, 5), (5, 3, 7), (5, 64, 64), (22, 2, 3), (3, 1, 1)])
def test_topk_equals_full_matrix_topk(method_cls: type[RetrievalMethod], k: int, bq: int, bv: int) -> None:
    method = method_cls()
    text, video = toy_data(11, 22, seed=3)
    # the same blocks as topk scores: bit-identical scores on any CPU, so the selection is compared exactly
    full = score_matrix(method, text, video, block_queries=bq, block_videos=bv)
    values, indices = topk(method, text, video, k, block_queries=bq, block_videos=bv)
    oracle_values, oracle_indices = stable_topk(full, k)
    assert torch.equal(values, oracle_values) and torch.equal(indices, oracle_indices)
    if method_cls is ToyAttentionPool:  # continuous scores: no ties, torch.topk is unambiguous
        ref = torch.topk(full, k, dim=1)
        assert torch.equal(values, ref.values) and torch.equal(indices, ref.indices)


def test_topk_ties_broken_by_lower_index_and_signed_zero() -> None:
    method = ToyMeanPool()
    text = {"text": torch.tensor([[1.0] + [0.0] * (D - 1), [-1.0] + [0.0] * (D - 1)])}
    first = torch.tensor([0.5, 0.0, 0.5, -0.0, 0.5, -2.0, 0.5, float("-inf"), 0.25, 0.0])  # (N,)
    video = {"video": torch.cat([first[:, None], torch.zeros(10, D - 1)], dim=1)}  # (N, D)
    values, indices = topk(method, text, video, 6, block_queries=1, block_videos=3)
    # query 0: the four 0.5 at 0, 2, 4, 6, then 0.25 at 8, then the first zero (0.0 == -0.0) at 1
    assert indices[0].tolist() == [0, 2, 4, 6, 8, 1]
    assert values[0].tolist() == [0.5, 0.5, 0.5, 0.5, 0.25, 0.0]
    # query 1 (negated): +inf at 7, 2.0 at 5, zeros at 1, 3, 9 (signs differ, values equal), -0.25 at 8
    assert indices[1].tolist() == [7, 5, 1, 3, 9, 8]


def test_topk_tie_across_kth_place_inside_one_block() -> None:
    method = ToyMeanPool()
    text = {"text": torch.ones(3, D)}
    column = torch.tensor([0.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    video = {"video": column[:, None] * torch.ones(16, D)}  # scores: 16 at index 3, 8 at fourteen others
    for bv in (16, 7):
        values, indices = topk(method, text, video, 4, block_queries=2, block_videos=bv)
        assert indices.tolist() == [[3, 1, 2, 4]] * 3
        assert values.tolist() == [[16.0, 8.0, 8.0, 8.0]] * 3


@pytest.mark.parametrize("method_cls", [ToyMeanPool, ToyAttentionPool])
def test_merge_topk_over_shards_equals_global(method_cls: type[RetrievalMethod]) -> None:
    method = method_cls()
    text, video = toy_data(9, 40, seed=5)
    k = 6
    global_values, global_indices = topk(method, text, video, k, block_queries=4, block_videos=16)
    bounds = [0, 5, 6, 23, 40]  # uneven shards, one smaller than k
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        shard = slice_encoded(video, start, stop)
        values, indices = topk(method, text, shard, min(k, stop - start), block_queries=3, block_videos=5)
        parts.append((values, indices + start))
    merged_values, merged_indices = merge_topk(parts[::-1], k=k)
    if method_cls is ToyMeanPool:  # exact scores with many ties: the lower-index rule across shards
        assert torch.equal(merged_values, global_values) and torch.equal(merged_indices, global_indices)
        return
    # shards are scored in other block shapes than the whole gallery: scores agree within the bound,
    # and where the two rankings differ the two videos are a near-tie (exact scores within the bound)
    tol = 2 * ATTENTION_POOL_BOUND
    torch.testing.assert_close(merged_values, global_values, rtol=0, atol=tol)
    exact = exact_scores(method, text, video)  # (Q, N)
    differ = merged_indices != global_indices
    gap = (exact.gather(1, merged_indices) - exact.gather(1, global_indices)).abs()  # (Q, k)
    assert (gap[differ] <= 2 * tol).all()


class GalleryVideos(Dataset):
    def __init__(self, frames: Tensor, mask: Tensor) -> None:
        self.frames, self.mask = frames, mask

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"frames": self.frames[i], "mask": self.mask[i], "index": torch.tensor(i)}


def test_encode_gallery_restores_gallery_order_from_shuffled_loader() -> None:
    method = ToyMeanPool()
    method.train()
    frames = torch.randn(10, F, 3, 2, 2, generator=torch.Generator().manual_seed(7))  # (N, F, 3, H, W)
    mask = torch.ones(10, F, dtype=torch.bool)
    mask[3, 2:] = False
    loader = DataLoader(
        GalleryVideos(frames, mask), batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    assert next(iter(loader))["index"].tolist() != [0, 1, 2]  # really shuffled
    seen: list[int] = []
    gallery = encode_gallery(method, loader, "cpu", progress=seen.append)
    with torch.no_grad():
        expected = method.encode_video(frames, mask)["video"]
    torch.testing.assert_close(gallery["video"], expected)
    assert sum(seen) == 10 and len(seen) == 4
    assert method.training and not any(method.seen_training[:-1])  # eval inside, train mode restored


def test_encode_gallery_rejects_duplicated_indices() -> None:
    batch = {"frames": torch.zeros(2, F, 3, 2, 2), "mask": torch.ones(2, F, dtype=torch.bool)}
    loader = [dict(batch, index=torch.tensor([0, 1])), dict(batch, index=torch.tensor([1, 2]))]
    with pytest.raises(ValueError, match="exactly once"):
        encode_gallery(ToyMeanPool(), loader, "cpu")
    with pytest.raises(KeyError, match="index"):
        encode_gallery(ToyMeanPool(), [batch], "cpu")


def test_encode_queries_in_batches() -> None:
    method = ToyMeanPool()
    tokens = torch.randint(0, 50, (11, 5), generator=torch.Generator().manual_seed(2))
    enc = encode_queries(method, tokens, batch_size=4, device="cpu")
    torch.testing.assert_close(enc["text"], method.embed[tokens[:, 0]].detach())


def test_encoded_helpers() -> None:
    a = {"x": torch.zeros(3, 4), "m": torch.ones(3, 2, dtype=torch.bool)}
    b = {"x": torch.ones(2, 4), "m": torch.zeros(2, 2, dtype=torch.bool)}
    both = concat_encoded([a, b])
    assert encoded_len(both) == 5
    assert torch.equal(slice_encoded(both, 2, 4)["x"], torch.tensor([[0.0] * 4, [1.0] * 4]))
    assert encoded_nbytes_per_item(both) == 4 * 4 + 2 * 1
    with pytest.raises(ValueError, match="keys"):
        concat_encoded([a, {"x": torch.zeros(1, 4)}])
    with pytest.raises(ValueError, match="disagree"):
        encoded_len({"x": torch.zeros(3), "y": torch.zeros(2)})


def test_score_matrix_rejects_bad_similarity_shape_and_block_size() -> None:
    class Broken(ToyMeanPool):
        def similarity(self, text: Encoded, video: Encoded) -> Tensor:
            return super().similarity(text, video).t()

    text, video = toy_data(3, 4)
    with pytest.raises(ValueError, match="Broken.similarity returned shape"):
        score_matrix(Broken(), text, video)
    with pytest.raises(ValueError, match="block_videos"):
        score_matrix(ToyMeanPool(), text, video, block_videos=0)
    with pytest.raises(ValueError, match="k must be"):
        topk(ToyMeanPool(), text, video, 5)


@pytest.mark.parametrize("k", [1, 4, 9, 40])
def test_candidate_filter_equals_block_topk(k: int) -> None:
    """The CPU group-maximum filter and the CUDA path's per-block torch.topk keep the same keys."""
    from psbench.ops.sortkeys import topk_keys
    from psbench.retrieval.engine import _block_topk_keys, _candidate_keys

    gen = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 6, (9, 300), generator=gen).float() / 4  # (q, v) many exact ties
    scores[2, 17] = -0.0
    running = torch.empty(9, 0, dtype=torch.int64)
    via_topk = _block_topk_keys(scores, 1000, k)
    via_filter = topk_keys(_candidate_keys(scores, running, 1000, k), k)
    assert torch.equal(via_filter, via_topk)
    # with a running top-k from an earlier block, only keys that can still enter are kept
    earlier = _block_topk_keys(scores.flip(1) + 0.5, 0, k)
    merged_filter = topk_keys(torch.cat([earlier, _candidate_keys(scores, earlier, 1000, k)], dim=1), k)
    merged_topk = topk_keys(torch.cat([earlier, via_topk], dim=1), k)
    assert torch.equal(merged_filter, merged_topk)


def test_topk_rejects_nan_scores() -> None:
    text, video = {"text": torch.ones(2, D)}, {"video": torch.ones(50, D)}
    video["video"][31, 0] = float("nan")
    for prefilter in ("off", "bf16"):
        with pytest.raises(ValueError, match="NaN"):
            topk(ToyMeanPool(), text, video, 3, block_queries=2, block_videos=16, prefilter=prefilter)

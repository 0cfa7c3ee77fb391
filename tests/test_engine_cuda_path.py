"""The device path of ``engine.topk`` (used on CUDA): exact against the float32 oracle, same tie rule.

Every check runs on CPU tensors with ``device_path=True`` (fp16/bf16 scores emulated on the CPU) and,
marked ``gpu``, on CUDA (``pytest -m gpu``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from psbench.method import Encoded, RetrievalMethod
from psbench.ops import device_topk
from psbench.ops.sortkeys import sort_keys, topk_keys
from psbench.retrieval.engine import score_matrix, topk, topk_block_sizes, uses_device_path
from tests.toys import StoredAttentionPool, StoredEmbeddings

D, F = 8, 4
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

cuda = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)
DEVICES = ["cpu", cuda]


def quantised(*shape: int, seed: int, levels: int = 4) -> Tensor:
    """Small multiples of 1/4: many exact ties among the scores, in every dtype."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-levels, levels + 1, shape, generator=gen).float() / 4


def data(q: int, n: int, dtype: torch.dtype, device: str, seed: int = 0) -> tuple[Encoded, Encoded]:
    text = quantised(q, D, seed=seed)
    frames = quantised(n, F, D, seed=seed + 1)
    video = {"video": frames[:, 0], "frames": frames}
    return {"text": text.to(device, dtype)}, {key: value.to(device, dtype) for key, value in video.items()}


def oracle(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Sort each float32 row by (score desc, index asc) with numpy's lexsort; -0.0 counts as 0.0."""
    values, indices = [], []
    for row in (scores.float().cpu() + 0.0).numpy():
        order = np.lexsort((np.arange(row.size), -row))[:k]
        values.append(row[order])
        indices.append(order)
    return torch.from_numpy(np.stack(values)), torch.from_numpy(np.stack(indices))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method_cls", [StoredEmbeddings, StoredAttentionPool])
@pytest.mark.parametrize(
    ("k", "bq", "bv"),
    [
        (1, 4, 5),
        *(
            pytest.param(*c, marks=pytest.mark.slow)
            for c in [(5, 3, 7), (10, 64, 64), (10, 5, 300), (37, 2, 3), (3, 1, 1)]
        ),
    ],
)  # make test-fast keeps the first block shape
def test_device_path_equals_float32_oracle(
    device: str, dtype: torch.dtype, method_cls: type[RetrievalMethod], k: int, bq: int, bv: int
) -> None:
    method = method_cls()
    text, video = data(11, 301, dtype, device, seed=k)
    # (Q, N) float32 cast of the native scores, from calls of the same block shapes (the same kernels)
    full = score_matrix(method, text, video, bq, bv, device=device)
    values, indices = topk(method, text, video, k, bq, bv, device=device, device_path=True)
    oracle_values, oracle_indices = oracle(full, k)
    assert values.dtype == torch.float32 and values.device.type == "cpu"
    assert torch.equal(values, oracle_values) and torch.equal(indices, oracle_indices)


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_path_equals_cpu_path(dtype: torch.dtype) -> None:
    method = StoredEmbeddings()
    text, video = data(9, 1000, dtype, "cpu", seed=5)
    cpu = topk(method, text, video, 10, 4, 128, prefilter="off", device_path=False)
    dev = topk(method, text, video, 10, 4, 128, device_path=True)
    assert torch.equal(cpu[0], dev[0]) and torch.equal(cpu[1], dev[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_path_ties_and_signed_zero(device: str, dtype: torch.dtype) -> None:
    method = StoredEmbeddings()
    text = torch.zeros(2, D)
    text[0, 0], text[1, 0] = 1.0, -1.0
    first = torch.tensor([0.5, 0.0, 0.5, -0.0, 0.5, -2.0, 0.5, float("-inf"), 0.25, 0.0])  # (N,)
    video = torch.cat([first[:, None], torch.zeros(10, D - 1)], dim=1)  # (N, D)
    for bv in (3, 10):
        encoded = {"text": text.to(device, dtype)}, {"video": video.to(device, dtype)}
        values, indices = topk(method, *encoded, 6, 1, bv, device, device_path=True)
        assert indices[0].tolist() == [0, 2, 4, 6, 8, 1]
        assert values[0].tolist() == [0.5, 0.5, 0.5, 0.5, 0.25, 0.0]
        assert indices[1].tolist() == [7, 5, 1, 3, 9, 8]


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_values_that_tie_stay_tied(device: str) -> None:
    """Scores that differ in float32 but round to one fp16 value are ranked as that fp16 value (the
    method's own output), ties to the lower index: exactly the float32 cast of the native scores."""
    method = StoredEmbeddings()
    text = torch.ones(1, 1)
    base = torch.tensor([1.0, 1.0 + 2**-12, 1.0 + 2**-11, 1.0 - 2**-13, 0.5])  # fp16 spacing at 1 is 2^-10
    video = {"video": base[:, None].to(device, torch.float16)}
    values, indices = topk(method, {"text": text.to(device, torch.float16)}, video, 3, device=device, device_path=True)
    assert indices.tolist() == [[0, 1, 2]] and values.tolist() == [[1.0, 1.0, 1.0]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("v", "k"),
    [
        (1, 1),
        (7, 7),
        (7, 10),
        (300, 1),
        (300, 10),
        *(pytest.param(*c, marks=pytest.mark.slow) for c in [(1000, 10), (1030, 4), (513, 100)]),
    ],
)  # make test-fast keeps the small galleries
def test_block_topk_keys_equals_full_row_keys(device: str, dtype: torch.dtype, v: int, k: int) -> None:
    scores = quantised(6, v, seed=v + k, levels=6).to(device, dtype)  # (q, v) many exact ties
    scores[0, v // 2] = -0.0
    expected = topk_keys(sort_keys(scores.float(), torch.arange(100, 100 + v, device=device).expand(6, v)), k)
    assert torch.equal(device_topk.block_topk_keys(scores, 100, k), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_is_flagged_on_the_device_and_raised_once(device: str) -> None:
    scores = torch.zeros(3, 500, device=device, dtype=torch.float16)
    scores[1, 433] = float("nan")
    flag = torch.zeros((), dtype=torch.bool, device=device)
    device_topk.block_topk_keys(scores[:, :400], 0, 5, flag)
    assert not bool(flag)
    device_topk.block_topk_keys(scores, 0, 5, flag)  # no raise: only flagged
    assert bool(flag)
    with pytest.raises(ValueError, match="NaN"):
        device_topk.block_topk_keys(scores, 0, 5)
    text, video = {"text": torch.ones(2, D, device=device)}, {"video": torch.ones(50, D, device=device)}
    video["video"][31, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        topk(StoredEmbeddings(), text, video, 3, 2, 16, device, device_path=True)


def test_group_size_keeps_k_groups_and_few_candidates() -> None:
    for v in (1, 9, 10, 11, 100, 4096, 100_000, 1_000_000):
        for k in (1, 10, 100):
            g = device_topk.group_size(v, k)
            groups = -(-v // g)
            assert 1 <= g <= 256
            assert groups >= min(k, v)  # enough groups to hold k real candidates
    assert device_topk.group_size(100_000, 10) == 128  # sqrt(10^4) = 100 -> 2^7


def test_device_block_sizes_fit_the_budget() -> None:
    gib = 1 << 30
    # Q=1000, D=512 fp16, 100k videos, plenty of memory: one block holds everything
    assert device_topk.device_block_sizes(1000, 100_000, 1024, 1024, 2, 100 * gib) == (1000, 100_000)
    bq, bv = device_topk.device_block_sizes(1000, 1_000_000, 1024, 1024, 2, 100 * gib)
    assert bq == 1000 and bv % 256 == 0 and bv < 1_000_000
    assert bq * bv * 2 + bv * 1024 <= device_topk.SCORE_BLOCK_BUDGET
    # little free memory: an eighth of it at most
    bq, bv = device_topk.device_block_sizes(1000, 1_000_000, 1024, 1024, 4, gib)
    assert bq * bv * 4 + bv * 1024 <= gib // 8
    assert device_topk.device_block_sizes(10_000, 50, 1024, 1024, 4, 100 * gib)[0] == device_topk.MAX_BLOCK_QUERIES
    with pytest.raises(ValueError, match="q must be"):
        device_topk.device_block_sizes(0, 10, 1, 1, 2, gib)


def test_block_sizes_default_per_path() -> None:
    text, video = data(3, 50, torch.float16, "cpu")
    assert topk_block_sizes(text, video, None, None, "cpu", False) == (1024, 4096)
    assert topk_block_sizes(text, video, None, None, "cpu", True) == (3, 50)
    assert topk_block_sizes(text, video, 2, None, "cpu", True) == (2, 50)
    assert topk_block_sizes(text, video, 2, 7, "cpu", True) == (2, 7)
    assert uses_device_path("cpu", None) is False and uses_device_path("cuda", None) is True
    assert uses_device_path("cpu", True) is True and uses_device_path("cuda", False) is False


def test_device_path_rejects_bf16_prefilter_and_unknown_names() -> None:
    text, video = data(3, 50, torch.float32, "cpu")
    with pytest.raises(ValueError, match="CPU path only"):
        topk(StoredEmbeddings(), text, video, 3, prefilter="bf16", device_path=True)
    with pytest.raises(ValueError, match="valid: auto"):
        topk(StoredEmbeddings(), text, video, 3, prefilter="fast", device_path=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_blocks_do_not_synchronise(dtype: torch.dtype) -> None:
    """Per-block selection and merging run with CUDA's sync debug mode set to error."""
    scores = torch.randn(64, 20_000, device="cuda").to(dtype)
    flag = torch.zeros((), dtype=torch.bool, device="cuda")
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        best = device_topk.block_topk_keys(scores[:, :8192], 0, 10, flag)
        for v0 in (8192, 16384):
            block = device_topk.block_topk_keys(scores[:, v0 : v0 + 8192], v0, 10, flag)
            best = topk_keys(torch.cat([best, block], dim=1), 10)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    index = torch.arange(20_000, device="cuda").expand(64, -1)
    assert torch.equal(best, topk_keys(sort_keys(scores.float(), index), 10))
    assert not bool(flag)


def test_efficiency_records_the_device_path() -> None:
    from psbench.efficiency.measure import DEVICE_TOPK_PATH
    from psbench.report.efficiency import topk_path_label

    assert topk_path_label(DEVICE_TOPK_PATH) == "device path, native dtype"

"""The RetrievalMethod contract, checked for every catalogued method on tiny backbones of both patch sizes
and at 6 and 64 frames.

A new method is covered as soon as it has its line in ``psbench.catalog``; no change to this file is needed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import torch
from open_clip import get_model_config

from psbench.backbone.clip import create_clip, tokenizer_for
from psbench.catalog import METHOD_TABLE, create_method, frame_count_error, method_options
from psbench.method import Batch, Encoded, RetrievalMethod

CAPTIONS = ["a dog runs on the grass", "a man is cooking", "two cars race", "a song plays", "kids laugh"]
NUM_VIDEOS = 4


@dataclass(frozen=True)
class Shape:
    """A backbone and a frame count every method must take: the tiny ViT (17 tokens per frame), its patch-16
    sibling at 224 px (196 patch tokens, as ViT-B/16), a patch-14 one (ViT-L/14's family), and the paragraph
    protocols' 64 frames."""

    arch: str
    frames: int

    @property
    def image_size(self) -> int:
        return int(get_model_config(self.arch)["vision_cfg"]["image_size"])


SHAPES = {
    "tiny-f6": Shape("psbench-tiny", 6),
    "p16-f6": Shape("psbench-tiny-p16", 6),
    "p14-f6": Shape("psbench-tiny-p14", 6),
    "tiny-f64": Shape("psbench-tiny", 64),
}
#: Prompt Switch's frames come in chunks of num_prompts: 64 frames take 8 prompts
CHUNKED_OPTIONS = {"num_prompts": 8}


def test_the_patch16_shape_has_vit_b16s_196_patch_tokens() -> None:
    assert tuple(create_clip("psbench-tiny-p16").visual.grid_size) == (14, 14)


def _options(name: str, frames: int) -> dict[str, object]:
    """No options, unless the method cannot take ``frames`` frames without them (then its chunk option)."""
    if frame_count_error(name, frames) is None:
        return {}
    assert set(CHUNKED_OPTIONS) <= set(method_options(name)), name
    assert frame_count_error(name, frames, CHUNKED_OPTIONS) is None, name
    return dict(CHUNKED_OPTIONS)


def _build(name: str, shape: Shape, seed: int = 0) -> RetrievalMethod:
    torch.manual_seed(seed)
    return create_method(name, create_clip(shape.arch), _options(name, shape.frames)).eval()


@pytest.fixture(
    scope="module",
    params=[pytest.param(k, marks=[] if k == "tiny-f6" else [pytest.mark.slow]) for k in SHAPES],  # fast: tiny-f6
)
def shape(request) -> Shape:
    return SHAPES[request.param]


@pytest.fixture(scope="module")
def inputs(shape: Shape):
    g = torch.Generator().manual_seed(7)
    size, f = shape.image_size, shape.frames
    frames = torch.randn(NUM_VIDEOS, f, 3, size, size, generator=g)
    mask = torch.ones(NUM_VIDEOS, f, dtype=torch.bool)
    mask[2, f - 2 :] = False  # one short video, zero-padded like the loaders do
    frames[2, f - 2 :] = 0.0
    torch.manual_seed(0)
    tokens = tokenizer_for(create_clip(shape.arch), 16)(CAPTIONS)
    return frames, mask, tokens


@pytest.fixture(scope="module", params=list(METHOD_TABLE))
def encoded(request, inputs, shape):
    frames, mask, tokens = inputs
    method = _build(request.param, shape)
    with torch.no_grad():
        text, video = method.encode_text(tokens), method.encode_video(frames, mask)
        scores = method.similarity(text, video)
    return request.param, method, text, video, scores


def _rows(enc: Encoded, index) -> Encoded:
    return {k: v[index] for k, v in enc.items()}


def test_shapes_and_leading_dimension(encoded):
    _, method, text, video, scores = encoded
    assert isinstance(text, dict) and isinstance(video, dict) and text and video
    assert all(v.shape[0] == len(CAPTIONS) for v in text.values()), {k: v.shape for k, v in text.items()}
    assert all(v.shape[0] == NUM_VIDEOS for v in video.values()), {k: v.shape for k, v in video.items()}
    assert scores.shape == (len(CAPTIONS), NUM_VIDEOS)
    assert torch.isfinite(scores).all()


def test_similarity_is_chunk_invariant(encoded):
    _, method, text, video, scores = encoded
    with torch.no_grad():
        for q_step, v_step in ((1, 1), (2, 3), (3, NUM_VIDEOS)):
            rows = []
            for q0 in range(0, len(CAPTIONS), q_step):
                t = _rows(text, slice(q0, q0 + q_step))
                cols = [
                    method.similarity(t, _rows(video, slice(v0, v0 + v_step))) for v0 in range(0, NUM_VIDEOS, v_step)
                ]
                rows.append(torch.cat(cols, dim=1))
            torch.testing.assert_close(torch.cat(rows), scores, rtol=0, atol=1e-5)


def test_video_batch_order_permutes_columns(encoded, inputs):
    _, method, text, _, scores = encoded
    frames, mask, _ = inputs
    perm = torch.tensor([3, 0, 2, 1])
    with torch.no_grad():
        permuted = method.similarity(text, method.encode_video(frames[perm], mask[perm]))
    torch.testing.assert_close(permuted, scores[:, perm], rtol=0, atol=1e-5)


def test_deterministic_under_a_seed(encoded, inputs, shape):
    name, _, _, _, scores = encoded
    frames, mask, tokens = inputs
    again = _build(name, shape)
    with torch.no_grad():
        scores_again = again.similarity(again.encode_text(tokens), again.encode_video(frames, mask))
    assert torch.equal(scores_again, scores)


def test_encode_video_never_sees_text(encoded, inputs):
    _, method, _, video, _ = encoded
    frames, mask, tokens = inputs
    params = list(inspect.signature(type(method).encode_video).parameters)
    assert params == ["self", "frames", "mask"], params
    with torch.no_grad():
        method.encode_text(tokens[:2])
        first = method.encode_video(frames, mask)
        method.encode_text(tokens.flip(0))
        second = method.encode_video(frames, mask)
    for key, value in video.items():
        assert torch.equal(first[key], value) and torch.equal(second[key], value), key


def test_training_loss_is_finite_and_has_gradients(encoded, inputs, shape):
    name = encoded[0]
    frames, mask, tokens = inputs
    trained = _build(name, shape)
    trained.train()
    if not trained.trainable:  # the chance floor: nothing to train, and the runner skips training
        assert not any(p.requires_grad for p in trained.parameters()), name
        assert not any(trained.parameter_groups().values()), name
        return
    batch = Batch(frames=frames, mask=mask, tokens=tokens[:NUM_VIDEOS], video_ids=[f"v{i}" for i in range(4)])
    out = trained.training_loss(batch)
    loss = out["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in trained.parameters() if p.grad is not None]
    assert any(torch.count_nonzero(g) > 0 for g in grads)

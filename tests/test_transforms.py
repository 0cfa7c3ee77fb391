"""Video transforms: shapes, CLIP normalisation, PIL oracle, one crop per video, seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psbench.backbone.clip import CLIP_MEAN, CLIP_STD
from psbench.data.transforms import TRANSFORMS, CropBox, make_transform, random_resized_crop_box

MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Back to 0..255 pixel units."""
    return (x * STD + MEAN) * 255.0


def random_video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_shapes_dtype_and_determinism(name: str) -> None:
    video = random_video(5, 48, 80)
    t = make_transform(name, 32)
    out = t(video, np.random.default_rng(3))
    assert out.shape == (5, 3, 32, 32)
    assert out.dtype == torch.float32
    assert torch.equal(out, t(video, np.random.default_rng(3)))


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_constant_clip_mean_frame_maps_to_zero(name: str) -> None:
    video = np.empty((3, 40, 56, 3), dtype=np.uint8)
    video[...] = np.round(np.array(CLIP_MEAN) * 255).astype(np.uint8)
    out = make_transform(name, 24)(video, np.random.default_rng(0))
    assert out.abs().max() < 0.5 / 255 / min(CLIP_STD) + 1e-6


def test_white_and_black_frames_hit_the_normalised_extremes() -> None:
    video = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    video[1] = 255
    out = make_transform("resize_center_crop", 16)(video, None)
    expected_black = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    expected_white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 5, 5], expected_black)
    torch.testing.assert_close(out[1, :, 5, 5], expected_white)


def test_resize_center_crop_matches_pil() -> None:
    """Oracle: CLIP's own preprocessing in PIL (shorter side, bicubic; centre crop)."""
    video = random_video(2, 60, 90, seed=5)
    smooth = np.stack([np.asarray(Image.fromarray(f).resize((45, 30), Image.BILINEAR)) for f in video])
    smooth = np.stack([np.asarray(Image.fromarray(f).resize((90, 60), Image.BILINEAR)) for f in smooth])
    out = unnormalize(make_transform("resize_center_crop", 40)(smooth, None))
    for k, frame in enumerate(smooth):
        resized = np.asarray(Image.fromarray(frame).resize((60, 40), Image.BICUBIC)).astype(np.float32)
        crop = resized[:, 10:50]  # (40, 40, 3)
        diff = np.abs(out[k].permute(1, 2, 0).numpy() - crop)
        assert diff.mean() < 1.0 and diff.max() <= 4.0


def test_resize_square_keeps_all_content_center_crop_drops_sides() -> None:
    video = np.full((1, 40, 80, 3), 255, dtype=np.uint8)
    video[:, :, :16] = 0  # left fifth black
    square = unnormalize(make_transform("resize_square", 40)(video, None))[0, 0]  # (40, 40)
    crop = unnormalize(make_transform("resize_center_crop", 40)(video, None))[0, 0]  # (40, 40)
    assert square[:, :6].max() < 5 and square[:, 10:].min() > 250  # 16/80 of 40 = 8 black columns
    assert crop.min() > 250  # the crop keeps columns 20..60 of 80: all white


def test_random_crop_is_the_same_for_all_frames_of_a_video() -> None:
    frame = random_video(1, 48, 64, seed=2)
    video = np.repeat(frame, 6, axis=0)
    t = make_transform("random_resized_crop_flip", 32)
    outputs = [t(video, np.random.default_rng(seed)) for seed in range(8)]
    for out in outputs:
        for k in range(1, 6):
            assert torch.equal(out[k], out[0])
    assert len({out[0].sum().item() for out in outputs}) > 4  # different seeds, different crops


def test_random_flip_happens_about_half_the_time() -> None:
    video = np.full((1, 64, 64, 3), 255, dtype=np.uint8)
    video[:, :, :32] = 0  # black left half; every crop of >= 50% area straddles column 32
    t = make_transform("random_resized_crop_flip", 32)
    flips = 0
    for seed in range(200):
        out = unnormalize(t(video, np.random.default_rng(seed)))[0, 0]  # (32, 32)
        left, right = out[:, 0].mean().item(), out[:, -1].mean().item()
        assert abs(left - right) > 200
        flips += left > right
    assert 70 < flips < 130


def test_random_transform_requires_rng() -> None:
    with pytest.raises(ValueError, match="needs an rng"):
        make_transform("random_resized_crop_flip", 16)(random_video(1, 20, 20), None)


def test_crop_box_properties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        box = random_resized_crop_box(60, 90, rng)
        assert box.top >= 0 and box.top + box.height <= 60
        assert box.left >= 0 and box.left + box.width <= 90
        fraction = box.height * box.width / (60 * 90)
        assert 0.45 <= fraction <= 1.0
        assert 3 / 4 - 0.06 <= box.width / box.height <= 4 / 3 + 0.06


def test_crop_box_fallback_on_thin_image() -> None:
    # 10 x 200: no box of >= 50% area and aspect <= 4/3 fits; fallback: full height, w = round(10 * 4/3)
    assert random_resized_crop_box(10, 200, np.random.default_rng(0)) == CropBox(0, 93, 10, 13)


def test_bad_input_is_rejected_with_shape() -> None:
    t = make_transform("resize_center_crop", 16)
    with pytest.raises(ValueError, match="uint8"):
        t(np.zeros((2, 16, 16, 3), dtype=np.float32), None)
    with pytest.raises(ValueError, match=r"\(16, 16, 3\)"):
        t(np.zeros((16, 16, 3), dtype=np.uint8), None)


@pytest.mark.parametrize("name", TRANSFORMS.names())
@pytest.mark.parametrize("height, width", [(48, 64), (32, 44), (24, 24)])
def test_normalize_gives_torchvision_values_and_the_old_layout(name: str, height: int, width: int) -> None:
    """Every transform's output equals ``Normalize(mean, std)(ToTensor()(x))`` of the official code bases bit
    for bit, with the strides the out-of-place form gave (channels-last after a resize, contiguous after a crop
    view), so the patch convolution sees the same layout. Sizes: downscale, a no-op resize, a square input."""
    import torchvision.transforms.v2.functional as TF

    from psbench.data import transforms

    def reference(frames: torch.Tensor) -> torch.Tensor:
        return TF.normalize(frames.to(torch.float32) / 255.0, list(CLIP_MEAN), list(CLIP_STD))

    video = random_video(3, height, width, seed=5)
    ours = make_transform(name, 24)(video, np.random.default_rng(2))
    original = transforms.normalize
    try:
        transforms.normalize = reference
        expected = make_transform(name, 24)(video, np.random.default_rng(2))
    finally:
        transforms.normalize = original
    assert torch.equal(ours, expected) and ours.stride() == expected.stride()
    assert video.dtype == np.uint8  # the input is not modified


@pytest.mark.parametrize("name", TRANSFORMS.names())
@pytest.mark.parametrize("height, width", [(48, 64), (32, 44), (24, 24)])
def test_uint8_batches_normalised_after_the_copy_equal_the_loader_normalised_ones(
    name: str, height: int, width: int
) -> None:
    """pixels="uint8": the transform stops before normalising; model_pixels on the collated batch (what
    Batch.to and the gallery encoder do after moving it to the device) gives the values and strides of the
    batch of normalised items, bit for bit."""
    from psbench.backbone.pixels import model_pixels
    from psbench.method import Batch

    videos = [random_video(3, height, width, seed=s) for s in range(2)]
    floats = torch.stack([make_transform(name, 24)(v, np.random.default_rng(i)) for i, v in enumerate(videos)])
    raw = [make_transform(name, 24, normalized=False)(v, np.random.default_rng(i)) for i, v in enumerate(videos)]
    assert all(r.dtype == torch.uint8 for r in raw)
    batch = torch.stack(raw)  # (B, F, 3, S, S) uint8, as collated
    ours = model_pixels(batch)
    assert torch.equal(ours, floats) and ours.stride() == floats.stride()
    assert model_pixels(floats) is floats  # already normalised: untouched
    moved = Batch(batch, torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.int64)).to("cpu")
    assert torch.equal(moved.frames, floats)


def test_a_gallery_of_uint8_items_encodes_exactly_as_one_of_normalised_items(tmp_path: Path) -> None:
    from psbench.backbone.clip import create_clip
    from psbench.catalog import create_method
    from psbench.data.loader import FrameSpec, GalleryDataset, make_gallery_loader, pixels_for
    from psbench.data.split import RetrievalSplit
    from psbench.data.video_writer import write_video
    from psbench.retrieval import engine

    paths = {}
    for i in range(3):
        paths[f"v{i}"] = tmp_path / f"v{i}.mp4"
        write_video(paths[f"v{i}"], random_video(10, 40, 48, seed=i))
    split = RetrievalSplit("test", list(paths), [], paths)
    torch.manual_seed(0)
    method = create_method("meanpool", create_clip("psbench-tiny")).eval()
    encoded = {}
    for pixels in ("normalized", "uint8"):
        dataset = GalleryDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32, pixels=pixels)
        assert dataset[0]["frames"].dtype == (torch.uint8 if pixels == "uint8" else torch.float32)
        encoded[pixels] = engine.encode_gallery(method, make_gallery_loader(dataset, 2, 0), "cpu")
    assert torch.equal(encoded["normalized"]["video"], encoded["uint8"]["video"])
    assert pixels_for("cuda") == "uint8" and pixels_for("cpu") == "normalized"
    with pytest.raises(ValueError, match="pixels='half'"):
        GalleryDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32, pixels="half")

"""Frame-accurate decoding, checked on videos whose pixels encode their own frame index."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType

from psbench.data.video import (
    FrameIndexError,
    VideoDecodeError,
    VideoNotFoundError,
    decode_frames,
    probe_video,
)
from psbench.data.video_writer import write_video

SIZE, BLOCK, BITS, NUM_FRAMES = 64, 16, 8, 50


def coded_frames(count: int) -> np.ndarray:
    """(count, 64, 64, 3): bit b of the frame number is a bright/dark 16x16 block (top half),
    its complement is the block below (bottom half), so the code survives lossy compression."""
    frames = np.zeros((count, SIZE, SIZE, 3), dtype=np.uint8)
    for t in range(count):
        for b in range(BITS):
            bit = (t >> b) & 1
            r, c = divmod(b, 4)
            frames[t, r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = 230 if bit else 25
            frames[t, (r + 2) * BLOCK : (r + 3) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = 25 if bit else 230
    return frames


def read_code(frame: np.ndarray) -> int:
    """Invert ``coded_frames`` for one decoded (H, W, 3) frame; checks the complement blocks too."""
    value = 0
    for b in range(BITS):
        r, c = divmod(b, 4)
        inner = slice(4, BLOCK - 4)
        top = frame[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK][inner, inner].mean()
        bottom = frame[(r + 2) * BLOCK : (r + 3) * BLOCK, c * BLOCK : (c + 1) * BLOCK][inner, inner].mean()
        assert (top > 128) != (bottom > 128), "frame code unreadable"
        value |= int(top > 128) << b
    return value


def write_with_bframes(path: Path, frames: np.ndarray, codec: str) -> None:
    """Encode with small GOPs and B-frames (decode order != presentation order)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        if codec == "libx264":
            stream.options = {"x264-params": "bframes=3:keyint=10:min-keyint=10:scenecut=0", "crf": "18"}
        else:
            stream.codec_context.gop_size = 10
            stream.codec_context.max_b_frames = 2
            stream.codec_context.bit_rate = 2_000_000
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    frames = coded_frames(NUM_FRAMES)
    out = {
        "x264_plain": root / "plain.mp4",
        "x264_bframes": root / "bframes.mp4",
        "mpeg4_bframes": root / "bframes.avi",
    }
    write_video(out["x264_plain"], frames)
    write_with_bframes(out["x264_bframes"], frames, "libx264")
    write_with_bframes(out["mpeg4_bframes"], frames, "mpeg4")
    return out


def picture_types(path: Path) -> set[str]:
    with av.open(str(path)) as container:
        return {PictureType(int(frame.pict_type)).name for frame in container.decode(video=0)}


def test_bframe_videos_really_have_bframes(videos: dict[str, Path]) -> None:
    assert "B" in picture_types(videos["x264_bframes"])
    assert "B" in picture_types(videos["mpeg4_bframes"])


def test_codes_roundtrip_through_full_decode(videos: dict[str, Path]) -> None:
    for path in videos.values():
        with av.open(str(path)) as container:
            codes = [read_code(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        assert codes == list(range(NUM_FRAMES)), path.name


@pytest.mark.parametrize("name", ["x264_plain", "x264_bframes", "mpeg4_bframes"])
def test_probe_counts_decoded_frames(videos: dict[str, Path], name: str) -> None:
    info = probe_video(videos[name])
    assert info.num_frames == NUM_FRAMES
    assert (info.width, info.height) == (SIZE, SIZE)
    assert info.fps == pytest.approx(8.0)
    assert info.duration == pytest.approx(NUM_FRAMES / 8.0, abs=0.25)


@pytest.mark.parametrize("name", ["x264_plain", "x264_bframes", "mpeg4_bframes"])
def test_decode_frames_random_unsorted_repeated_indices(videos: dict[str, Path], name: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(4):
        indices = rng.integers(0, NUM_FRAMES, size=12).tolist()
        indices += [indices[0], NUM_FRAMES - 1, 0]  # a repeat and both ends
        frames = decode_frames(videos[name], indices)
        assert frames.shape == (len(indices), SIZE, SIZE, 3)
        assert frames.dtype == np.uint8
        assert [read_code(f) for f in frames] == indices


@pytest.mark.parametrize("name", ["x264_plain", "x264_bframes", "mpeg4_bframes"])
def test_decoded_pixels_equal_pyav_per_frame_conversion(videos: dict[str, Path], name: str) -> None:
    """decode_frames' shared single-threaded colour converter gives exactly the pixels of PyAV's own
    ``frame.to_ndarray(format="rgb24")`` (what psbench used before), frame by frame."""
    with av.open(str(videos[name])) as container:
        expected = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (N, H, W, 3)
    indices = list(range(NUM_FRAMES))[::-1]
    assert np.array_equal(decode_frames(videos[name], indices), expected[indices])


def test_prompt_switch_interleave_order_is_kept(videos: dict[str, Path]) -> None:
    indices = [2, 10, 18, 26, 34, 42, 5, 13, 21, 29, 37, 45]  # chunk 0 then chunk 1
    frames = decode_frames(videos["x264_bframes"], indices)
    assert [read_code(f) for f in frames] == indices


@pytest.mark.parametrize("name", ["x264_bframes", "mpeg4_bframes"])
def test_naive_timestamp_seek_returns_the_wrong_frame(videos: dict[str, Path], name: str) -> None:
    """The trap: seek to frame k's own timestamp, take the first decoded frame -> a key frame < k."""
    path = videos[name]
    with av.open(str(path)) as container:
        pts = [frame.pts for frame in container.decode(video=0)]
    target = 17  # not a key frame: GOP is 10
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(pts[target], stream=stream)
        first = next(container.decode(stream))
        naive = read_code(first.to_ndarray(format="rgb24"))
    assert naive != target
    assert naive < target
    assert read_code(decode_frames(path, [target])[0]) == target


def test_out_of_range_index_names_the_file(videos: dict[str, Path]) -> None:
    path = videos["x264_plain"]
    with pytest.raises(FrameIndexError, match=str(path)) as info:
        decode_frames(path, [3, NUM_FRAMES])
    assert f"{NUM_FRAMES} frames" in str(info.value)
    with pytest.raises(FrameIndexError, match=str(path)):
        decode_frames(path, [-1])
    with pytest.raises(ValueError, match=str(path)):
        decode_frames(path, [])


def test_missing_file_raises_not_found_with_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "video42.mp4"
    with pytest.raises(VideoNotFoundError, match="video42.mp4") as info:
        probe_video(path)
    assert str(path) in str(info.value)
    with pytest.raises(VideoNotFoundError, match=str(path)):
        decode_frames(path, [0])


def test_truncated_mp4_raises_decode_error_with_path(videos: dict[str, Path], tmp_path: Path) -> None:
    data = videos["x264_bframes"].read_bytes()
    for cut in (len(data) // 2, len(data) - 200):
        path = tmp_path / f"cut{cut}.mp4"
        path.write_bytes(data[:cut])
        with pytest.raises(VideoDecodeError, match=str(path)):
            probe_video(path)
        with pytest.raises(VideoDecodeError, match=str(path)):
            decode_frames(path, [0, NUM_FRAMES - 1])


def test_truncated_avi_is_detected_by_probe(videos: dict[str, Path], tmp_path: Path) -> None:
    """AVI demuxes without its trailing index: the decoder silently yields fewer frames than the
    header declares; probe must call that a truncation, not return a short count."""
    data = videos["mpeg4_bframes"].read_bytes()
    path = tmp_path / "half.avi"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="truncated") as info:
        probe_video(path)
    assert str(path) in str(info.value)


def test_faststart_mp4_with_cut_media_data_raises(tmp_path: Path) -> None:
    """moov at the front: the index survives the cut, the media data does not."""
    path = tmp_path / "faststart.mp4"
    frames = coded_frames(30)
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    cut = tmp_path / "faststart_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoDecodeError, match=str(cut)):
        probe_video(cut)


def test_garbage_bytes_raise_decode_error_with_path(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match=str(path)):
        probe_video(path)
    with pytest.raises(VideoDecodeError, match=str(path)):
        decode_frames(path, [0])
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=str(empty)):
        probe_video(empty)

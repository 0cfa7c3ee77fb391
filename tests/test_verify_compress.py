"""`psbench data verify` (existence, decoding, checksums, manifest) and `psbench data compress`."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from psbench.cli.data import register
from psbench.data.prepare.compress import (
    RECIPE_FILE,
    CompressSettings,
    compress_videos,
    output_size,
    read_compress_recipe,
)
from psbench.data.prepare.verify import IncompleteDatasetError, missing_videos, require_videos, verify_dataset
from psbench.data.split import Caption, RetrievalSplit
from psbench.data.video import VideoDecodeError, decode_frames, probe_video
from psbench.data.video_writer import write_video
from psbench.protocol import PROTOCOL_DIR
from tests.conftest import read_only_folder


def level_frames(n: int, h: int = 16, w: int = 16) -> np.ndarray:
    """Uniform grey frames whose level encodes the frame index (index * 10)."""
    return np.stack([np.full((h, w, 3), 10 * i, np.uint8) for i in range(n)])


def make_split(folder: Path) -> RetrievalSplit:
    """Three videos: `good` decodes, `gone` has no file, `cut` is truncated."""
    videos = folder / "videos"
    write_video(videos / "good.mp4", level_frames(8))
    write_video(videos / "cut.mp4", level_frames(8))
    data = (videos / "cut.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(data[: len(data) // 2])
    ids = ["good", "gone", "cut"]
    paths = {v: videos / f"{v}.mp4" for v in ids}
    return RetrievalSplit("test", ids, [Caption(f"caption of {v}", v) for v in ids], paths)


def data_app() -> typer.Typer:
    app = typer.Typer()
    sub = typer.Typer()
    app.add_typer(sub, name="data")
    register(sub)
    return app


# ------------------------------------------------------------------------------------------ verify


@pytest.mark.parametrize("workers", [1, 2])
def test_verify_reports_missing_and_truncated_by_name(tmp_path: Path, workers: int) -> None:
    split = make_split(tmp_path)
    out = tmp_path / "manifest.json"
    manifest = verify_dataset([split], workers=workers, out=out)
    assert not manifest.ok
    assert list(manifest.missing) == ["gone"] and manifest.missing["gone"].endswith("gone.mp4")
    assert list(manifest.corrupt) == ["cut"] and "cut.mp4" in manifest.corrupt["cut"]
    good = manifest.videos["good"]
    assert (good.frames, good.width, good.height) == (8, 16, 16)
    assert good.duration == pytest.approx(1.0) and good.fps == pytest.approx(8)
    assert good.sha256 == hashlib.sha256((tmp_path / "videos" / "good.mp4").read_bytes()).hexdigest()
    written = json.loads(out.read_text())
    assert written["counts"] == {"videos": 3, "ok": 1, "missing": 1, "corrupt": 1}
    assert written["splits"] == {"test": {"videos": 3, "captions": 3}}
    assert written["videos"]["good"]["sha256"] == good.sha256 and set(written["corrupt"]) == {"cut"}
    assert not list(tmp_path.glob(".manifest.json*"))  # no temporary file left behind


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_truncated_video_is_corrupt_whatever_the_container(tmp_path: Path, suffix: str) -> None:
    """Matroska declares a duration, not a frame count: 7 s at 8 fps is 56 frames, as mp4's header says."""
    whole, cut = tmp_path / f"whole{suffix}", tmp_path / f"cut{suffix}"
    noise = np.random.default_rng(0).integers(0, 256, (56, 32, 32, 3), dtype=np.uint8)  # bytes grow with frames
    write_video(whole, noise, fps=8)
    info = probe_video(whole)
    assert info.num_frames == 56 and info.duration == pytest.approx(7.0)
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.35)])
    if suffix == ".mkv":
        with pytest.raises(VideoDecodeError, match=r"truncated video: container declares 7 s at 8 fps = 56 frames"):
            probe_video(cut)
    split = RetrievalSplit("test", ["cut"], [Caption("a", "cut")], {"cut": cut})
    manifest = verify_dataset([split])
    assert list(manifest.corrupt) == ["cut"] and cut.name in manifest.corrupt["cut"]


def test_verify_decodes_a_shared_video_once_and_reports_progress(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    seen: list[tuple[int, int]] = []
    manifest = verify_dataset([split, split.subset(["good"])], progress=lambda d, t: seen.append((d, t)))
    assert manifest.counts()["videos"] == 3 and seen[-1] == (3, 3)


def test_missing_videos_and_require_videos(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    assert missing_videos(split) == ["gone"]
    with pytest.raises(IncompleteDatasetError, match=r"split 'test': 1 of 3 video file\(s\) missing \(gone"):
        require_videos(split)
    kept = require_videos(split, skip_missing=True)
    assert kept.video_ids == ["good", "cut"] and [c.video_id for c in kept.captions] == ["good", "cut"]
    assert require_videos(kept) is kept


def test_cli_verify_names_missing_videos_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "captions_msvd.json").write_text(json.dumps({"vidA": ["a cat"], "vidB": ["a dog"]}))
    (tmp_path / "test_list.txt").write_text("vidA\nvidB\n")
    write_video(tmp_path / "videos" / "vidA.mp4", level_frames(4))
    protocol = tmp_path / "msvd-2.toml"  # the msvd protocol for a 2-video test list
    protocol.write_text((PROTOCOL_DIR / "msvd.toml").read_text().replace("test_videos = 670", "test_videos = 2"))
    args = ["data", "verify", "--dataset", "msvd", "--root", str(tmp_path), "--protocol", str(protocol)]
    args += ["--split", "test"]
    result = CliRunner().invoke(data_app(), args)
    assert result.exit_code == 1, result.output
    assert "missing vidB" in result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"] == {"videos": 2, "ok": 1, "missing": 1, "corrupt": 0}
    (tmp_path / "test_list.txt").write_text("vidA\n")
    short = CliRunner().invoke(data_app(), args)  # the list no longer has the protocol's 2 videos
    assert short.exit_code == 2 and "test_list.txt: split 'test' lists 1 video(s), expected 2" in short.output
    protocol.write_text(protocol.read_text().replace("test_videos = 2", "test_videos = 1"))
    ok = CliRunner().invoke(data_app(), [*args, "--out", str(tmp_path / "m2.json")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "m2.json").is_file()
    wrong = CliRunner().invoke(data_app(), ["data", "verify", "--dataset", "lsmdc", "--root", str(tmp_path)])
    assert wrong.exit_code == 2  # the lsmdc annotation file is not there: a clear error, not a traceback


# ------------------------------------------------------------------------------------------ compress


def test_output_size_keeps_aspect_with_even_sides() -> None:
    assert output_size(320, 240, 224) == (298, 224)
    assert output_size(240, 320, 224) == (224, 298)
    assert output_size(64, 48, 32) == (42, 32)
    with pytest.raises(ValueError, match="even"):
        CompressSettings(size=225)


def test_compress_fps_size_timestamps_and_resume(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_video(src / "a.mp4", level_frames(24, 48, 64), fps=12)  # 2 s at 12 fps
    write_video(src / "movie" / "b.mp4", level_frames(6, 64, 48), fps=2)  # 3 s at 2 fps: slower than 3 fps
    settings = CompressSettings(fps=3, size=32)
    report = compress_videos(src, dst, settings)
    assert report.ok and sorted(Path(p).name for p in report.written) == ["a.mp4", "b.mp4"]
    a, b = probe_video(dst / "a.mp4"), probe_video(dst / "movie" / "b.mp4")
    assert a.fps == pytest.approx(3) and abs(a.num_frames - 6) <= 1 and (a.width, a.height) == (42, 32)
    assert b.fps == pytest.approx(3) and abs(b.num_frames - 9) <= 1 and (b.width, b.height) == (32, 42)
    # output frame k shows the source frame nearest to k/3 s: 12 fps -> source frames 0, 4, 8, ...
    levels = decode_frames(dst / "a.mp4", range(a.num_frames)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(levels, [10 * 4 * k for k in range(a.num_frames)], atol=4)
    levels_b = decode_frames(dst / "movie" / "b.mp4", range(b.num_frames)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(levels_b, [10 * round(k * 2 / 3 + 1e-9) for k in range(b.num_frames)], atol=4)
    recipe = read_compress_recipe(dst)
    assert recipe is not None
    assert (recipe["fps"], recipe["size"], recipe["codec"]) == (3, 32, "libx264")
    assert recipe["source_dir"] == str(src.resolve()) and recipe["versions"]["psbench"]
    assert recipe["counts"]["written"] == 2
    # resumable: decodable outputs are skipped, a broken one is redone; no temporary files remain
    (dst / "a.mp4").write_bytes(b"not a video")
    again = compress_videos(src, dst, settings, workers=2)
    assert [Path(p).name for p in again.written] == ["a.mp4"] and [Path(p).name for p in again.skipped] == ["b.mp4"]
    assert probe_video(dst / "a.mp4").num_frames == a.num_frames
    assert not [p for p in dst.rglob(".*") if p.is_file()]
    with pytest.raises(ValueError, match="different recipe.*fps"):
        compress_videos(src, dst, CompressSettings(fps=5, size=32))


def x264_settings(path: Path) -> str:
    """The option string libx264 writes into the stream it encodes (an SEI user-data message)."""
    data = path.read_bytes()
    start = data.index(b"x264 - core")
    return data[start : data.index(b"\x00", start)].decode("ascii", "replace")


def test_compress_tune_fastdecode_is_applied_recorded_and_part_of_the_recipe(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_video(src / "a.mp4", level_frames(12, 48, 64), fps=6)
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    compress_videos(src, plain, CompressSettings(fps=3, size=32))
    compress_videos(src, fast, CompressSettings(fps=3, size=32, tune="fastdecode"))
    assert "cabac=1" in x264_settings(plain / "a.mp4") and "deblock=1" in x264_settings(plain / "a.mp4")
    assert "cabac=0" in x264_settings(fast / "a.mp4") and "deblock=0" in x264_settings(fast / "a.mp4")
    assert (read_compress_recipe(plain)["tune"], read_compress_recipe(fast)["tune"]) == ("", "fastdecode")
    with pytest.raises(ValueError, match="different recipe.*tune: 'fastdecode' there, '' now"):
        compress_videos(src, fast, CompressSettings(fps=3, size=32))
    # a recipe written before the tune key existed reads as "no tune"
    recipe = json.loads((plain / RECIPE_FILE).read_text())
    del recipe["tune"]
    (plain / RECIPE_FILE).write_text(json.dumps(recipe))
    assert compress_videos(src, plain, CompressSettings(fps=3, size=32)).skipped == [str(src / "a.mp4")]
    with pytest.raises(ValueError, match="tune: '' there, 'fastdecode' now"):
        compress_videos(src, plain, CompressSettings(fps=3, size=32, tune="fastdecode"))
    with pytest.raises(ValueError, match="unknown tune 'fast'; libx264 knows film"):
        CompressSettings(tune="fast")


def test_compress_reports_an_unreadable_source_by_name(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_video(src / "ok.mp4", level_frames(4), fps=4)
    (src / "broken.avi").write_bytes(b"\x00" * 64)
    report = compress_videos(src, dst, CompressSettings(fps=2, size=16))
    assert not report.ok and list(report.failed) == [str(src / "broken.avi")]
    assert (dst / "ok.mp4").is_file() and not (dst / "broken.mp4").exists()
    assert json.loads((dst / RECIPE_FILE).read_text())["failed"] == report.failed


def test_cli_compress(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_video(src / "v.mp4", level_frames(8, 32, 32), fps=8)
    args = ["data", "compress", "--src", str(src), "--dst", str(dst), "--fps", "2", "--size", "16", "--workers", "1"]
    result = CliRunner().invoke(data_app(), args)
    assert result.exit_code == 0, result.output
    info = probe_video(dst / "v.mp4")
    assert (info.width, info.height, info.fps) == (16, 16, 2) and abs(info.num_frames - 2) <= 1
    missing = CliRunner().invoke(data_app(), ["data", "compress", "--src", str(tmp_path / "nope"), "--dst", str(dst)])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def _msvd_root(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "ro"
    root.mkdir()
    (root / "captions_msvd.json").write_text(json.dumps({"vidA": ["a cat"]}))
    (root / "test_list.txt").write_text("vidA\n")
    write_video(root / "videos" / "vidA.mp4", level_frames(4))
    protocol = tmp_path / "msvd-1.toml"
    protocol.write_text((PROTOCOL_DIR / "msvd.toml").read_text().replace("test_videos = 670", "test_videos = 1"))
    args = ["data", "verify", "--dataset", "msvd", "--root", str(root), "--protocol", str(protocol), "--split", "test"]
    return root, args


def test_verify_on_read_only_root_fails_before_decoding_or_uses_manifest_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psbench.data.prepare.verify as verify_module

    root, args = _msvd_root(tmp_path)
    read_only_folder(monkeypatch, root)
    decoded: list[str] = []
    real_check = verify_module.check_video
    monkeypatch.setattr(verify_module, "check_video", lambda p: decoded.append(p) or real_check(p))
    refused = CliRunner().invoke(data_app(), args)
    assert refused.exit_code == 2 and decoded == []
    assert (
        f"cannot write the manifest {root / 'manifest.json'}" in refused.output and "--manifest PATH" in refused.output
    )
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    elsewhere = tmp_path / "out" / "manifest.json"
    ok = CliRunner().invoke(data_app(), [*args, "--manifest", str(elsewhere)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(elsewhere.read_text())["counts"]["ok"] == 1 and not (root / "manifest.json").exists()


def test_verify_prints_results_when_the_manifest_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from psbench.data.prepare.verify import Manifest

    root, args = _msvd_root(tmp_path)

    def disk_full(self: Manifest, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Manifest, "write", disk_full)
    result = CliRunner().invoke(data_app(), args)
    assert result.exit_code == 2
    assert "videos" in result.output and "ok" in result.output  # the table came first
    assert "the results above were not saved" in result.output and "No space left on device" in result.output

"""The side-by-side benchmark scripts run end to end at toy sizes, and the fp32 peak takes the best backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psbench.efficiency.matmul_peak import fp32_matmul_peak
from psbench.ops import linear as cpu_linear

pytestmark = pytest.mark.slow  # runs every benchmark script in a child process

ROOT = Path(__file__).resolve().parents[1]


def test_fp32_peak_is_the_best_backend() -> None:
    peak = fp32_matmul_peak(size=128, warmup=1, repeats=2)
    backends = peak["by_backend"]
    assert {"torch", "numpy"} <= set(backends)
    assert ("onednn" in backends) is cpu_linear.onednn_fp32_available()
    assert peak["gflops"] == max(row["gflops"] for row in backends.values()) > 0
    assert backends[peak["backend"]]["gflops"] == peak["gflops"]


def run_script(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_topk_vs_faiss_runs_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "topk.json"
    script = "benchmarks/topk_vs_faiss.py"
    run_script(script, "--queries", "20", "--gallery", "3000", "--dim", "32", "--matmul-size", "128", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["paths_same_topk_fraction"] == 1.0  # both engine paths return the same exact top-k
    assert result["engine_topk_float32"]["prefilter"] == "off"
    assert 0 < result["float32_path_ratio_to_peak"] <= 1 and result["default_path_ratio_to_peak"] > 0
    assert result["matmul_peak"]["reference"]["gflops"] >= result["bare_gemm"]["gflops"]
    if result["faiss"]["available"]:
        assert result["topk_equal_to_faiss_fraction"] == {"off": 1.0, "auto": 1.0}


def test_xpool_similarity_runs_at_toy_size() -> None:
    script = "benchmarks/xpool_similarity.py"
    stdout = run_script(script, "--queries", "8", "--videos", "300", "--matmul-size", "128", "--no-mlock")
    assert "ratio to matmul peak" in stdout and "peak extra RSS" in stdout


def test_xpool_forms_compares_both_forms_in_one_run(tmp_path: Path) -> None:
    """Both X-Pool forms at toy size, side by side: equal scores, the FLOP ratio, shares of one peak."""
    args = ["--queries", "8", "--videos", "300", "--frames", "12", "24", "--matmul-size", "128", "--threads", "1"]
    run_script("benchmarks/xpool_forms.py", *args, "--out", str(tmp_path))
    result = json.loads((tmp_path / "xpool_forms.json").read_text())
    assert [p["frames"] for p in result["points"]] == [12, 24]
    for point in result["points"]:
        assert point["max_abs_score_difference"] < 1e-5
        assert point["flop_ratio"] == point["reference"]["flops_per_pair"] / point["folded"]["flops_per_pair"] > 1
        for form in ("reference", "folded"):
            assert 0 < point[form]["share_of_peak"] <= 1  # the peak includes the forms' own rates


def test_gpu_check_runs_tiny_on_cpu(tmp_path: Path) -> None:
    """The GPU check script runs end to end at toy sizes on the CPU, so the device call cannot fail on a typo."""
    out = tmp_path / "out"
    run_script("benchmarks/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out))
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.log").is_file() and report["environment"]["torch"] == torch.__version__
    points = report["topk"]["points"]
    assert {(p["dtype"], p["videos"]) for p in points} == {(d, n) for d in ("fp16", "bf16") for n in (3000, 7000)}
    assert all(p["exact_vs_float32_oracle"]["exact"] and p["gemm_s"] > 0 and p["ratio_to_gemm"] > 0 for p in points)
    xpool = report["xpool"]
    if "forms" in xpool:
        assert "reference" in xpool["forms"] and xpool["bf16_gemm"]["peak_tflops"] > 0
        assert set(xpool["forms"]) | set(xpool["not_measured"]) == {"reference", "folded"}
    else:
        assert xpool["status"].startswith("not measured")
    assert report["train_real_video"]["status"].startswith("not implemented")
    # a spent budget skips every point and says so
    run_script("benchmarks/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out), "--budget-s", "0")
    skipped = json.loads((out / "gpu_check.json").read_text())
    assert skipped["topk"]["points"] == [] and len(skipped["topk"]["skipped"]) == 4


def test_fp32_peak_includes_a_faster_bare_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stubbed timer: the square product runs at 170.6 GFLOP/s, the bare (Q, D) @ (D, N) GEMM at 222.4
    (as on the Intel machine): the run's peak is the bare GEMM and no fp32 figure exceeds 100% of it."""
    import psbench.efficiency.matmul_peak as mp

    size = 64
    square_seconds = 2 * size**3 / 170.6e9
    monkeypatch.setattr(mp, "median_seconds", lambda fn, warmup, repeats: (square_seconds, [square_seconds]))
    square = mp.fp32_matmul_peak(size, warmup=0, repeats=1)
    assert square["gflops"] == pytest.approx(170.6)
    figures = {"bare GEMM (Q,D)@(D,N)": 222.4, "engine fp32 path": 210.0}
    ref = mp.fp32_reference_peak(square, figures)
    assert ref["source"] == "bare GEMM (Q,D)@(D,N)" and ref["gflops"] == 222.4
    assert ref["square_gflops"] == pytest.approx(170.6)
    shares = [g / ref["gflops"] for g in [*figures.values(), *(r["gflops"] for r in square["by_backend"].values())]]
    assert max(shares) == 1.0
    # a square product faster than every same-shape figure stays the peak
    assert mp.fp32_reference_peak(square, {"bare GEMM (Q,D)@(D,N)": 100.0})["source"].startswith("square 64^3")


def test_index_10m_runs_at_toy_size(tmp_path: Path) -> None:
    """The 10M-video benchmark end to end at toy size: sharded search = faiss = in-memory, X-Pool marked."""
    out = tmp_path / "index.json"
    args = ["--gallery", "5000", "--dim", "16", "--queries", "20", "--shard-size", "700", "--subset", "2100"]
    args += ["--index-dir", str(tmp_path / "index"), "--xpool-arch", "psbench-tiny", "--xpool-frames", "2"]
    run_script("benchmarks/index_10m.py", "run", *args, "--out", str(out))
    result = json.loads(out.read_text())
    assert result["build"]["shards"] == 8 and result["search_peak_rss_under_4gib"] and result["cold_equals_warm"]
    assert result["subset_vs_in_memory"] == {"videos": 2100, "ids_equal": True, "scores_equal": True, "storage": "fp16"}
    assert result["search_cold"]["io"]["rchar"] >= result["build"]["bytes"]  # every shard byte was read
    if result["faiss"]["available"]:
        assert result["vs_faiss"]["queries"] == 20
    xpool = result["xpool"]
    assert (
        xpool["status"] == "extrapolated" and xpool["index_bytes_per_video"] == 3 * 2 * 64 * 2 + 2
    )  # frames, keys, values (F=2, D=64, fp16) + mask
    assert out.with_suffix(".md").read_text().startswith("# Exact top-10")


def test_video_input_runs_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "video_input.json"
    args = ["--videos", "2", "--seconds", "2", "--workers", "0", "--workers", "2", "--repeats", "1", "--out", str(out)]
    run_script("benchmarks/video_input.py", *args)
    result = json.loads(out.read_text())
    for kind in result["kinds"].values():
        assert kind["decode_bound_ms"] > 0 and kind["test_item_manifest_ms"] > 0 and kind["probe_ms"] > 0
        assert kind["train_item_uint8_ms"] > 0 and kind["test_item_uint8_ms"] > 0
        assert set(kind["epochs"]) == {"0", "2"} and all(v > 0 for e in kind["epochs"].values() for v in e.values())
    assert len(result["kinds"]) == 3  # raw, compressed, compressed with --tune fastdecode
    text = out.with_suffix(".md").read_text()
    assert "decode bound" in text and "Below the standard bound" in text and "uint8 out" in text

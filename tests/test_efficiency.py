"""The efficiency runner on the tiny backbone: JSON fields, budget/memory extrapolation, fit, device path."""

from __future__ import annotations

import json
import mmap
import os
import time
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from psbench.catalog import efficiency_methods
from psbench.efficiency import measure as eff

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides: object) -> eff.EfficiencyConfig:
    base = dict(
        methods=["meanpool", "xpool", "xpool-folded", "promptswitch"],
        arch="psbench-tiny",
        frames=6,
        queries=8,
        gallery=1000,
        sweep=True,
        min_gallery=250,
        points_per_decade=1,
        ratio_galleries=(100, 500, 3000),  # 100 and 3000 lie outside the requested 250..1000: never measured
        budget_s=10.0,
        repeats=2,
        offline_repeats=1,
        text_queries=4,
        k=5,
        block_videos=400,
    )
    base.update(overrides)
    return eff.EfficiencyConfig(**base)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eff")
    return eff.run_efficiency(tiny_config(), out), out


@pytest.mark.slow  # a whole efficiency sweep
def test_json_has_every_field(tiny_result: tuple[dict, Path]) -> None:
    result, out = tiny_result
    on_disk = json.loads((out / "efficiency.json").read_text())
    assert on_disk["schema_version"] == eff.SCHEMA_VERSION
    assert (out / "efficiency_scaling.png").stat().st_size > 0
    assert (out / "efficiency_scaling.pdf").stat().st_size > 0
    for key in ("config", "environment", "synthetic_embeddings", "flop_convention", "methods", "gallery_sizes"):
        assert key in on_disk
    assert on_disk["gallery_sizes"] == [250, 1000]
    for name, res in on_disk["methods"].items():
        off, txt, onl = res["offline"], res["text"], res["online"]
        assert off["flops_fvcore"] > 0 and off["flops_closed_form"] == pytest.approx(off["flops_fvcore"], rel=0.03)
        assert off["latency_s"]["repeats"] == 1 and off["bytes_per_video"] > 0
        assert txt["flops_per_query_fvcore"] == pytest.approx(txt["flops_per_query_closed_form"], rel=0.03)
        assert txt["query_set_extrapolated"] and txt["queries_timed"] == 4
        assert onl["flops_per_pair_fvcore"] > 0 and onl["flops_per_pair_closed_form"] > 0
        assert onl["topk_path"] in eff.TOPK_PATHS.values()
        sizes = [p["gallery"] for p in res["points"]]
        assert sizes == ([250, 500, 1000] if name in ("xpool", "xpool-folded", "promptswitch") else [250, 1000])
        for p in res["points"]:
            assert p["status"] == "measured" and p["queries_timed"] == 8 and not p["query_set_extrapolated"]
            stats = p["latency_per_query_s"]
            assert stats["min"] <= stats["median"] <= stats["max"] and stats["repeats"] == 2
            assert p["peak_memory_bytes"] is not None and p["gallery_bytes"] == p["gallery"] * off["bytes_per_video"]
        assert res["fit"]["points_used"] == len(sizes)
    assert on_disk["methods"]["meanpool"]["offline"]["encoded"] == {"video": {"shape": [64], "dtype": "float32"}}
    assert set(on_disk["methods"]["xpool"]["offline"]["encoded"]) == {"frames", "mask", "keys", "values"}
    assert on_disk["methods"]["xpool"]["online"]["topk_path"] == eff.TOPK_PATHS[False]  # not an inner product
    assert on_disk["methods"]["xpool"]["online"]["similarity_form"].startswith("reference")
    assert on_disk["methods"]["xpool-folded"]["online"]["similarity_form"].startswith("folded")
    assert set(on_disk["methods"]["xpool-folded"]["offline"]["encoded"]) >= {"keys", "mask", "proj", "stats"}
    reference_pair = on_disk["methods"]["xpool"]["online"]["flops_per_pair_closed_form"]
    assert on_disk["methods"]["xpool-folded"]["online"]["flops_per_pair_closed_form"] < reference_pair / 2
    folded_ratios = on_disk["xpool_folded_vs_promptswitch"]
    assert [r["gallery"] for r in folded_ratios] == [250, 500, 1000] and all(r["ratio"] > 0 for r in folded_ratios)
    assert "fair headline" in on_disk["xpool_forms"]
    ratios = on_disk["xpool_vs_promptswitch"]
    assert [r["gallery"] for r in ratios] == [250, 500, 1000] and all(r["ratio"] > 0 for r in ratios)
    for r in ratios:  # the ratio comes with its spread over the repeats (2 x 2 repeat ratios)
        spread = r["ratio_spread"]
        assert spread["pairs"] == 4 and spread["min"] <= spread["q1"] <= spread["q3"] <= spread["max"]
        assert spread["min"] <= r["ratio"] <= spread["max"]


@pytest.mark.parametrize("name", efficiency_methods())  # every method, inference form and floor of the catalogue
def test_every_efficiency_method_is_measured_and_its_closed_forms_match_fvcore(name: str) -> None:
    cfg = tiny_config(methods=[name], sweep=False, gallery=200, queries=4, repeats=1, budget_s=5.0)
    res = eff.measure_method(name, cfg, [200], eff.resolve_device("cpu"))
    off, txt, onl = res["offline"], res["text"], res["online"]
    assert off["flops_closed_form"] == pytest.approx(off["flops_fvcore"], rel=0.03)
    assert txt["flops_per_query_closed_form"] == pytest.approx(txt["flops_per_query_fvcore"], rel=0.03)
    assert onl["flops_per_pair_closed_form"] > 0 and off["bytes_per_video"] > 0
    (point,) = res["points"]
    assert point["status"] == "measured" and point["latency_per_query_s"]["median"] > 0


def test_sweep_never_measures_beyond_the_requested_gallery() -> None:
    """`--gallery 3000 --sweep`: no point above 3,000 (the ratio's default 10k / 100k sizes are dropped)."""
    cfg = tiny_config(gallery=3000, ratio_galleries=eff.EfficiencyConfig.ratio_galleries)
    seen: dict[str, list[int]] = {}

    def fake_measure(name, cfg, sizes, device, advance=None):
        seen[name] = sizes
        return {"points": []}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eff, "measure_method", fake_measure)
        result = eff.run_efficiency(cfg)
    assert max(result["gallery_sizes"]) == 3000
    assert all(max(sizes) <= 3000 for sizes in seen.values()) and seen["xpool"] == sorted(set(seen["xpool"]))
    assert 1000 in seen["xpool"] and 10_000 not in seen["xpool"]


def test_tiny_budget_marks_every_point_extrapolated() -> None:
    cfg = tiny_config(methods=["meanpool"], budget_s=1e-9)
    res = eff.measure_method("meanpool", cfg, [500, 2000], eff.resolve_device("cpu"))
    assert [p["status"] for p in res["points"]] == ["extrapolated", "extrapolated"]
    assert all("budget" in p["reason"] and p["latency_per_query_s"] is None for p in res["points"])
    assert res["fit"] is None


def test_memory_cap_extrapolates_from_the_fit() -> None:
    per_video = 64 * 4  # meanpool on psbench-tiny stores one fp32 64-vector
    cfg = tiny_config(methods=["meanpool"], max_gallery_bytes=1200 * per_video)
    res = eff.measure_method("meanpool", cfg, [500, 1000, 4000, 8000], eff.resolve_device("cpu"))
    status = [p["status"] for p in res["points"]]
    assert status == ["measured", "measured", "extrapolated", "extrapolated"]
    a = res["fit"]["seconds_per_video"]
    for p in res["points"][2:]:
        assert "memory" in p["reason"] and p["queries_timed"] == 0
        assert p["latency_per_query_s"] == {"median": pytest.approx(a * p["gallery"]), "extrapolated": True}
        assert p["latency_query_set_s"] == pytest.approx(a * p["gallery"] * cfg.queries)


def test_fit_recovers_known_linear_cost() -> None:
    sizes = [1000, 3000, 10_000, 30_000]
    fit = eff.fit_linear(sizes, [2.5e-7 * n for n in sizes])
    assert fit is not None and fit.seconds_per_video == pytest.approx(2.5e-7)
    assert fit.loglog_slope == pytest.approx(1.0)
    assert fit.predict(1_000_000) == pytest.approx(0.25)
    assert eff.fit_linear([1000], [1e-3]).loglog_slope is None
    assert eff.fit_linear([], []) is None


def test_gallery_sizes() -> None:
    assert eff.gallery_sizes(100_000, sweep=False) == [100_000]
    assert eff.gallery_sizes(100_000, sweep=True) == [1000, 3162, 10_000, 31_623, 100_000]
    assert eff.gallery_sizes(1_000_000, sweep=True, per_decade=1) == [1000, 10_000, 100_000, 1_000_000]


def fresh_resident_pages(size: int) -> mmap.mmap:
    """``size`` bytes of new anonymous memory, every page written (resident whatever the allocator)."""
    pages = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        pages[offset] = 1
    return pages


def test_device_path_on_cpu_and_dtype_casting() -> None:
    """The same code path as CUDA: synchronise (no-op), clock, peak memory, dtype cast."""
    device = eff.resolve_device("cpu")
    eff.synchronize(device)
    assert eff.time_once(lambda: time.sleep(0.01), device) >= 0.009
    with eff.PeakMemory(device) as held:
        pages = fresh_resident_pages(64 * 2**20)
    del pages
    assert held.peak_bytes >= 60 * 2**20 and held.method
    with eff.PeakMemory(device) as transient:  # freed before exit: only the sampler thread can see it
        pages = fresh_resident_pages(64 * 2**20)
        time.sleep(0.2)  # 100 sampling intervals
        del pages
    assert transient.peak_bytes >= 60 * 2**20
    cfg = tiny_config(methods=["meanpool"], dtype="bf16", sweep=False, gallery=300)
    res = eff.measure_method("meanpool", cfg, [300], device)
    assert res["offline"]["encoded"]["video"]["dtype"] == "bfloat16"
    assert res["offline"]["bytes_per_video"] == 64 * 2
    assert res["points"][0]["status"] == "measured"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            eff.resolve_device("cuda")


def test_synthetic_encoded_structure() -> None:
    template = {"keys": torch.randn(1, 3, 4), "mask": torch.tensor([[True, False, True]])}
    syn = eff.SyntheticEncoded(template, 10, torch.device("cpu"), torch.float16, seed=0)
    part = syn.take(4)
    assert part["keys"].shape == (4, 3, 4) and part["keys"].dtype == torch.float16
    assert torch.equal(part["mask"], template["mask"].expand(4, 3))
    assert torch.equal(syn.take(10)["keys"][:4], part["keys"])  # earlier rows are kept
    assert eff.bytes_per_item(template, torch.float16) == 3 * 4 * 2 + 3


def test_cli_help_has_examples() -> None:
    from psbench.cli import efficiency, index

    app = typer.Typer()
    app.command("noop")(lambda: None)
    efficiency.register(app)
    index.register(app)
    runner = CliRunner()
    for args in (["efficiency", "--help"], ["index", "build", "--help"], ["index", "search", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Example" in result.output, args


@pytest.mark.gpu
def test_efficiency_on_gpu(tmp_path: Path) -> None:
    cfg = tiny_config(device="cuda", dtype="fp16", methods=["meanpool", "xpool"])
    result = eff.run_efficiency(cfg, tmp_path)
    for res in result["methods"].values():
        assert all(p["status"] == "measured" for p in res["points"])
        assert res["points"][0]["extra"]["peak_memory_method"] == "torch.cuda.max_memory_allocated"
        assert res["online"]["gallery_device"].startswith("cuda")


def test_gallery_cap_counts_reclaimable_page_cache() -> None:
    """The default cap is half of MemAvailable (free + reclaimable cache), never more than 8 GiB."""
    available = eff.available_host_memory()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < available <= total
    assert available >= 0.9 * free_pages  # page cache only adds to what is free
    expected = min(8 * 2**30, available // 2)
    assert eff.default_gallery_cap(torch.device("cpu")) == pytest.approx(expected, rel=0.1)  # memory moves


def test_a_frame_count_a_method_cannot_take_fails_before_anything_is_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    measured: list[str] = []
    monkeypatch.setattr(eff, "measure_method", lambda name, *args, **kwargs: measured.append(name) or {})
    with pytest.raises(ValueError, match="multiple of num_prompts: got 64 frames per video with num_prompts=6"):
        eff.run_efficiency(tiny_config(frames=64))
    assert measured == []  # not meanpool and xpool first, then the error
    eff.run_efficiency(tiny_config(frames=64, methods=["promptswitch"], options={"promptswitch": {"num_prompts": 8}}))
    assert measured == ["promptswitch"]

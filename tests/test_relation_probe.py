"""The relation probe: its generator, loader and metric, and the argument it rests on, checked on the real
methods: any mean of per-frame features maps a group's four videos onto linearly dependent vectors
(aa + bb = ab + ba before normalisation), a method whose frames exchange information does not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from psbench.backbone.clip import create_clip
from psbench.catalog import create_method
from psbench.data.datasets import load_split
from psbench.data.loader import FrameSpec, GalleryDataset
from psbench.data.paths import AnnotationError
from psbench.data.relation_probe import GROUPS_FILE, generate_relation_probe
from psbench.data.video import decode_frames, probe_video
from psbench.protocol import load_protocol, resolve
from psbench.retrieval import metrics
from tests.paths import REPO_ROOT as REPO

GROUPS = {"train": 2, "val": 1, "test": 4}


@pytest.fixture(scope="module")
def probe_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    generate_relation_probe(root, seed=0, groups=GROUPS, size=32, num_frames=24, workers=1)
    return root


def _data_cfg():  # noqa: ANN202 - the protocol's DataConfig
    return resolve(load_protocol("relation-probe"), "meanpool", 0, {}).data


def test_files_counts_and_groups(probe_root: Path) -> None:
    groups = json.loads((probe_root / GROUPS_FILE).read_text())
    assert len(groups) == sum(GROUPS.values())
    twins = json.loads((probe_root / "twins.json").read_text())
    for entry in groups.values():
        (aa, bb), (ab, ba) = entry["same"], entry["different"]
        assert twins[aa] == ab and twins[bb] == ba and twins[ab] == aa  # hard negative: same first half
    test = load_split(_data_cfg(), probe_root, "test")
    assert len(test.video_ids) == 4 * GROUPS["test"] and len(test.relation_groups) == GROUPS["test"]
    texts = {c.video_id: c.text for c in test.captions}
    for g in test.relation_groups:
        assert texts[g.same[0]] == texts[g.same[1]] and texts[g.different[0]] == texts[g.different[1]]
        assert texts[g.same[0]].endswith("both the same colour")
        assert texts[g.different[0]].endswith("two different colours")
        assert not any(c in texts[g.same[0]] for c in ("red", "green", "blue", "yellow"))  # no colour named


def test_every_frame_slot_of_the_same_pair_is_a_frame_of_the_different_pair(probe_root: Path) -> None:
    """The construction, on decoded files: per slot, {aa, bb} and {ab, ba} show the same frames exactly."""
    test = load_split(_data_cfg(), probe_root, "test")
    for g in test.relation_groups:
        aa, bb, ab, ba = (decode_frames(test.video_paths[v], list(range(24))) for v in g.members)
        assert probe_video(test.video_paths[g.same[0]]).num_frames == 24
        assert np.array_equal(aa[:12], ab[:12]) and np.array_equal(bb[:12], ba[:12])
        assert np.array_equal(aa[12:], ba[12:]) and np.array_equal(bb[12:], ab[12:])
        assert not np.array_equal(aa, bb)


def test_a_group_naming_an_unknown_video_is_an_error_naming_the_file(probe_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(probe_root, root, ignore=shutil.ignore_patterns("videos"))
    groups = json.loads((root / GROUPS_FILE).read_text())
    first = next(k for k, v in groups.items() if v["split"] == "test")
    groups[first]["same"][1] = "no_such_video"
    (root / GROUPS_FILE).write_text(json.dumps(groups))
    with pytest.raises(AnnotationError, match=rf"{GROUPS_FILE}.*{first}.*no_such_video"):
        load_split(_data_cfg(), root, "test")
    (root / GROUPS_FILE).write_text("{not json")
    with pytest.raises(AnnotationError, match=GROUPS_FILE):
        load_split(_data_cfg(), root, "test")


def _cosine_scores(text: np.ndarray, video: np.ndarray) -> np.ndarray:
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    v = video / np.linalg.norm(video, axis=1, keepdims=True)
    return t @ v.T  # (Q, N)


def test_no_additive_pooling_passes_a_group_and_an_interaction_can() -> None:
    """Random position-coded frame features and captions, 2000 draws: the group score of a mean is always 0."""
    rng = np.random.default_rng(0)
    slots, dim = 6, 8
    groups = np.array([[0, 1, 2, 3]])
    caption_video = np.array([0, 1, 2, 3])  # videos aa, bb, ab, ba with captions same, same, diff, diff
    passes = 0
    for _ in range(2000):
        f = rng.normal(size=(2, 2 * slots, dim))  # (colour, slot, D)
        colour = np.array(
            [[0] * slots + [0] * slots, [1] * 2 * slots, [0] * slots + [1] * slots, [1] * slots + [0] * slots]
        )
        video = f[colour, np.arange(2 * slots)].mean(axis=1)  # (4, D)
        same, diff = rng.normal(size=(2, dim))
        scores = _cosine_scores(np.stack([same, same, diff, diff]), video)
        margins = metrics.relation_margins(scores, caption_video, groups)
        assert abs(float((margins * np.linalg.norm(video, axis=1)).sum())) < 1e-9
        passes += int((margins > 0).all())
    assert passes == 0
    # an interaction term (the product of the halves' means) separates the relation at once
    same_dir = np.array([1.0, 0.0])
    halves = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]], dtype=float)  # colour code of each half
    video = np.stack([np.ones(4), halves[:, 0] * halves[:, 1]], axis=1)  # (4, 2): bias, product
    scores = _cosine_scores(
        np.stack([same_dir + [0, 1], same_dir + [0, 1], same_dir - [0, 1], same_dir - [0, 1]]), video
    )
    summary = metrics.relation_summary(metrics.relation_margins(scores, caption_video, groups))
    assert summary["group_score"] == 100.0 and summary["video_accuracy"] == 100.0


def test_relation_summary_counts_ties_as_half() -> None:
    margins = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, -1.0, 1.0]])
    s = metrics.relation_summary(margins)
    assert s["group_score"] == 50.0 and s["video_accuracy"] == pytest.approx(100 * (4 + 2.5) / 8)


def _dependence_residual(vectors: torch.Tensor) -> tuple[float, np.ndarray]:
    """Least-squares fit of u_aa = c1 (-u_bb) + c2 u_ab + c3 u_ba: the residual relative to the vectors'
    spread around their mean (random frame features are nearly parallel), and the coefficients."""
    u = vectors.double().numpy()  # (4, D)
    basis = np.stack([-u[1], u[2], u[3]], axis=1)  # (D, 3)
    coef, *_ = np.linalg.lstsq(basis, u[0], rcond=None)
    spread = np.linalg.norm(u - u.mean(axis=0), axis=1).mean()  # how far the four vectors are apart
    return float(np.linalg.norm(basis @ coef - u[0]) / spread), coef


@pytest.mark.slow  # five methods on decoded videos (make test runs it)
@pytest.mark.parametrize(
    ("method", "additive"),
    [
        ("meanpool", True),
        ("promptswitch-noswitch", True),
        ("promptswitch", False),
        ("tokenshift", False),
        ("videoproxy", False),
    ],
)
def test_real_methods_map_a_group_onto_dependent_vectors_only_without_frame_exchange(
    probe_root: Path, method: str, additive: bool
) -> None:
    """Random tiny CLIP and method weights, decoded probe videos: the normalised video vectors of an additive
    method satisfy |v_aa| u_aa + |v_bb| u_bb = |v_ab| u_ab + |v_ba| u_ba (positive coefficients, residual ~2e-6
    of their spread); with frame exchange they are independent."""
    torch.manual_seed(0)
    model = create_method(method, create_clip("psbench-tiny")).eval()
    with torch.no_grad():  # away from the zero-initialised new parts (a switch that starts as a no-op)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    test = load_split(_data_cfg(), probe_root, "test")
    dataset = GalleryDataset(test, FrameSpec(num_frames=6, sampler="uniform"), "resize_center_crop", 32)
    index = {v: i for i, v in enumerate(test.video_ids)}
    residuals = []
    for g in test.relation_groups:
        items = [dataset[index[v]] for v in g.members]
        frames = torch.stack([it["frames"] for it in items])  # (4, F, 3, H, W)
        mask = torch.stack([it["mask"] for it in items])  # (4, F)
        with torch.no_grad():
            video = model.encode_video(frames, mask)["video"].float()  # (4, D)
        residual, coef = _dependence_residual(video)
        residuals.append(residual)
        if additive:
            assert (coef > 0).all(), coef
    if additive:
        assert max(residuals) < 1e-4, residuals  # float32 rounding
    else:
        assert min(residuals) > 1e-3, residuals  # additive: ~2e-6


@pytest.mark.slow  # gradient descent from several starts (make test runs it)
def test_the_argument_script_finds_the_bound_and_the_escape() -> None:
    spec = importlib.util.spec_from_file_location(
        "relation_probe_argument", REPO / "benchmarks/relation_probe_argument.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    additive = module.best_over_restarts(3, 6, 8, restarts=3, steps=300, exchange=False, unit_frames=False)
    exchange = module.best_over_restarts(3, 6, 8, restarts=3, steps=300, exchange=True, unit_frames=False)
    assert (
        additive["group_score"] == 0.0 and additive["video_accuracy"] <= 75.0 and additive["identity_residual"] < 1e-5
    )
    assert exchange["group_score"] == 100.0


@pytest.mark.slow  # four zero-shot runs and a report
def test_zero_shot_runs_record_the_diagnostic_and_the_report_shows_it(probe_root: Path, tmp_path: Path) -> None:
    from psbench.backbone.clip import save_clip
    from psbench.report.build import build_report
    from psbench.runs.runner import run

    torch.manual_seed(0)
    save_clip(create_clip("psbench-tiny"), probe_root / "tiny_clip.pt")
    sets = {"train.epochs": 0, "test.batch_size": 8, "test.num_workers": 0}
    for method in ("meanpool", "promptswitch-noswitch", "promptswitch", "random"):
        run_dir = run(
            resolve(load_protocol("relation-probe"), method, 0, sets), tmp_path / "runs", data_root=probe_root
        )
        rel = json.loads((run_dir / "metrics.json").read_text())["relation"]
        assert rel["groups"] == GROUPS["test"] and 0.0 <= rel["video_accuracy"] <= 100.0
        if method in ("meanpool", "promptswitch-noswitch"):
            assert rel["group_score"] == 0.0 and rel["video_accuracy"] <= 75.0, (method, rel)
        margins = json.loads((run_dir / "ranks.json").read_text())["relation"]["margins"]
        assert np.asarray(margins).shape == (GROUPS["test"], 4)
    build_report([tmp_path / "runs"], tmp_path / "report", protocols=["relation-probe"], pdf=False)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "relation-probe: relation probe (" in text and "relation-probe: relation probe, paired (" in text
    assert "order accuracy (synthetic twins)" not in text  # the probe's twins are not reversals

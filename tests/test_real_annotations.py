"""The real protocols: MSR-VTT 1k-A, MSVD and LSMDC loaders on the released annotation files, the
duplicated captions they contain and the tie rule that scores them, and every protocol file."""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from psbench.data.datasets import DATASETS, load_split
from psbench.data.lsmdc import lsmdc_video_path, read_lsmdc_lines
from psbench.data.paths import AnnotationError
from psbench.data.real_datasets import LSMDC_SKIPPED_CLIP
from psbench.data.split import RetrievalSplit
from psbench.protocol import DataConfig, list_protocols, load_protocol, method_family, resolve
from tests.paths import SHARED_ANNOTATIONS

SHARED = SHARED_ANNOTATIONS


@pytest.fixture(scope="module")
def annotations() -> Path:
    if not (SHARED / "msrvtt" / "MSRVTT_JSFUSION_test.csv").is_file():
        pytest.skip(f"shared annotation files not found in {SHARED} (they are not part of the project)")
    return SHARED


def split_of(annotations: Path, dataset: str, split: str, **cfg: object) -> RetrievalSplit:
    """Load a split straight from the shared folder (default file names; no videos needed)."""
    return load_split(DataConfig(dataset=dataset, **cfg), annotations / dataset, split)


def duplicated(split: RetrievalSplit) -> dict[str, set[str]]:
    """caption string -> the videos it describes, for strings that occur more than once."""
    videos: dict[str, list[str]] = defaultdict(list)
    for c in split.captions:
        videos[c.text].append(c.video_id)
    return {text: set(v) for text, v in videos.items() if len(v) > 1}


# ------------------------------------------------------------------------------------------ registry


def test_real_datasets_are_registered() -> None:
    for name in ("msrvtt", "msvd", "lsmdc"):
        assert name in DATASETS


# ------------------------------------------------------------------------------------------ MSR-VTT


def test_msrvtt_1ka_test_has_1000_pairs(annotations: Path) -> None:
    split = split_of(annotations, "msrvtt", "test")
    assert len(split.captions) == len(split.video_ids) == 1000
    assert split.caption_video_index() == list(range(1000))
    numbers = sorted(int(v.removeprefix("video")) for v in split.video_ids)
    assert (numbers[0], numbers[-1]) == (7020, 9975)


def test_msrvtt_duplicated_captions_4_strings_over_9_rows(annotations: Path) -> None:
    counts = Counter(c.text for c in split_of(annotations, "msrvtt", "test").captions)
    repeated = {t: n for t, n in counts.items() if n > 1}
    assert len(repeated) == 4 and sum(repeated.values()) == 9
    assert repeated["a man playing video games"] == 3


def test_msrvtt_train_split_from_registry(tmp_path: Path, annotations: Path) -> None:
    ids = ["video0", "video1", "video2"]
    (tmp_path / "ids.csv").write_text("video_id\n" + "\n".join(ids) + "\n")
    sentences = [{"video_id": v, "caption": f"{v} caption {k}", "sen_id": k} for k in range(2) for v in ids]
    sentences.append({"video_id": "video9999", "caption": "not in the split", "sen_id": 9})
    (tmp_path / "data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    cfg = DataConfig(dataset="msrvtt", files={"train": "ids.csv", "train_captions": "data.json"})
    split = load_split(cfg, tmp_path, "train")
    assert split.video_ids == ids and len(split.captions) == 6
    assert split.video_paths["video0"] == tmp_path / "videos" / "video0.mp4"
    # the real 9k id csv is found, the captions file is not: the error names the file and its key
    with pytest.raises(FileNotFoundError, match=r"absent\.json \(data\.files\.train_captions\)"):
        split_of(annotations, "msrvtt", "train", files={"train_captions": "absent.json"})


def test_msrvtt_missing_annotation_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"MSRVTT_JSFUSION_test\.csv \(data\.files\.test\)"):
        load_split(DataConfig(dataset="msrvtt"), tmp_path, "test")
    with pytest.raises(ValueError, match="no annotation file for 'holdout'"):
        load_split(DataConfig(dataset="msrvtt"), tmp_path, "holdout")


# ------------------------------------------------------------------------------------------ MSVD


def test_msvd_splits(annotations: Path) -> None:
    test = split_of(annotations, "msvd", "test")
    assert len(test.video_ids) == len(set(test.video_ids)) == 670  # each video once in the gallery
    assert len(test.captions) == 27763
    per_video = Counter(c.video_id for c in test.captions)
    assert (min(per_video.values()), max(per_video.values())) == (21, 81)
    train, val = split_of(annotations, "msvd", "train"), split_of(annotations, "msvd", "val")
    assert (len(train.video_ids), len(train.captions)) == (1200, 48774)
    assert (len(val.video_ids), len(val.captions)) == (100, 4290)
    assert not set(train.video_ids) & set(test.video_ids) and not set(val.video_ids) & set(test.video_ids)


def test_msvd_961_caption_strings_belong_to_several_videos(annotations: Path) -> None:
    shared = {t: v for t, v in duplicated(split_of(annotations, "msvd", "test")).items() if len(v) > 1}
    assert len(shared) == 961


def test_msvd_malformed_files_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "captions_msvd.json").write_text(json.dumps({"a": ["x"], "b": ["y"]}))
    (tmp_path / "test_list.txt").write_text("a\nb\na\n")
    with pytest.raises(AnnotationError, match=r"test_list\.txt line 3: video id 'a' already listed on line 1"):
        load_split(DataConfig(dataset="msvd"), tmp_path, "test")
    (tmp_path / "test_list.txt").write_text("a\nc\n")
    with pytest.raises(AnnotationError, match=r"no captions for 1 video.*'c'"):
        load_split(DataConfig(dataset="msvd"), tmp_path, "test")
    (tmp_path / "test_list.txt").write_text("a\n../b\n")
    with pytest.raises(AnnotationError, match=r"test_list\.txt line 2: video id '\.\./b'"):
        load_split(DataConfig(dataset="msvd"), tmp_path, "test")
    (tmp_path / "captions_msvd.json").write_text('{"a": ["x"],\n "b": []}')
    (tmp_path / "test_list.txt").write_text("a\n")
    with pytest.raises(AnnotationError, match=r"captions_msvd\.json entry 'b'"):
        load_split(DataConfig(dataset="msvd"), tmp_path, "test")


# ------------------------------------------------------------------------------------------ LSMDC


def test_lsmdc_test_1000_clips_or_999_with_the_skip(annotations: Path) -> None:
    full = split_of(annotations, "lsmdc", "test")
    assert len(full.video_ids) == len(full.captions) == 1000
    skipped = split_of(annotations, "lsmdc", "test", exclude_videos=[LSMDC_SKIPPED_CLIP])
    assert len(skipped.video_ids) == len(skipped.captions) == 999
    assert LSMDC_SKIPPED_CLIP in full.video_ids and LSMDC_SKIPPED_CLIP not in skipped.video_ids
    lines = read_lsmdc_lines(annotations / "lsmdc" / "LSMDC16_challenge_1000_publictect.csv")
    [entry] = [e for e in lines if e.clip_id == LSMDC_SKIPPED_CLIP]
    assert entry.line == 109 and entry.sentence.startswith("The man picks up the second magazine")


def test_lsmdc_duplicated_captions_5_strings_twice(annotations: Path) -> None:
    counts = Counter(c.text for c in split_of(annotations, "lsmdc", "test").captions)
    repeated = {t: n for t, n in counts.items() if n > 1}
    assert len(repeated) == 5 and set(repeated.values()) == {2}
    assert "SOMEONE frowns." in repeated


def _lsmdc_line(clip: str, sentence: str) -> str:
    return "\t".join([clip, "00.00.01.000", "00.00.02.000", "00.00.01.000", "00.00.02.000", sentence])


def test_lsmdc_training_every_line_or_last_caption_per_clip(tmp_path: Path) -> None:
    a, b = "0001_Movie_00.00.01.000-00.00.02.000", "0001_Movie_00.00.03.000-00.00.04.000"
    lines = [_lsmdc_line(a, "first of a"), _lsmdc_line(b, "only b"), _lsmdc_line(a, "last of a")]
    (tmp_path / "LSMDC16_annos_training.csv").write_text("\n".join(lines) + "\n")
    every = load_split(DataConfig(dataset="lsmdc"), tmp_path, "train")
    assert every.video_ids == [a, b]
    assert [c.text for c in every.captions] == ["first of a", "only b", "last of a"]
    deduped = load_split(DataConfig(dataset="lsmdc", dedupe_train_by_video=True), tmp_path, "train")
    assert [(c.video_id, c.text) for c in deduped.captions] == [(a, "last of a"), (b, "only b")]
    dropped = load_split(DataConfig(dataset="lsmdc", exclude_videos=[a]), tmp_path, "train")
    assert dropped.video_ids == [b] and [c.text for c in dropped.captions] == ["only b"]


def test_lsmdc_dedupe_applies_to_the_training_split_only(tmp_path: Path) -> None:
    a = "0001_Movie_00.00.01.000-00.00.02.000"
    (tmp_path / "t.csv").write_text(_lsmdc_line(a, "one") + "\n" + _lsmdc_line(a, "two") + "\n")
    cfg = DataConfig(dataset="lsmdc", dedupe_train_by_video=True, files={"test": "t.csv"})
    assert len(load_split(cfg, tmp_path, "test").captions) == 2


def test_lsmdc_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    good = _lsmdc_line("0001_Movie_00.00.01.000-00.00.02.000", "fine")
    cases = {
        "five fields": good.rsplit("\t", 1)[0],
        "empty sentence": _lsmdc_line("0001_Movie_00.00.05.000-00.00.06.000", "  "),
        "unsafe id": _lsmdc_line("../0001_Movie", "escape"),
    }
    for what, bad in cases.items():
        path = tmp_path / "t.csv"
        path.write_text(f"{good}\n\n{bad}\n")
        with pytest.raises(AnnotationError, match=r"t\.csv line 3"):
            load_split(DataConfig(dataset="lsmdc", files={"test": "t.csv"}), tmp_path, "test")
        assert what  # each case reaches the error


def test_video_dir_must_stay_inside_the_root(tmp_path: Path, annotations: Path) -> None:
    for bad in ("../videos", "/abs/videos"):
        with pytest.raises(ValueError, match="inside the data root"):
            split_of(annotations, "lsmdc", "test", video_dir=bad)


def test_lsmdc_videos_flat_or_in_movie_folders_inside_the_root(tmp_path: Path) -> None:
    clip = "1012_Unbreakable_00.05.16.065-00.05.21.941"
    videos = tmp_path / "videos"
    assert lsmdc_video_path(videos, clip) == videos / f"{clip}.avi"  # expected path when absent
    (videos / "1012_Unbreakable").mkdir(parents=True)
    (videos / "1012_Unbreakable" / f"{clip}.avi").write_bytes(b"x")
    assert lsmdc_video_path(videos, clip) == videos / "1012_Unbreakable" / f"{clip}.avi"
    (videos / f"{clip}.mp4").write_bytes(b"x")
    assert lsmdc_video_path(videos, clip) == videos / f"{clip}.mp4"  # a flat file wins
    other = tmp_path / "elsewhere.avi"
    other.write_bytes(b"x")
    (videos / f"{clip}.mp4").unlink()
    (videos / "1012_Unbreakable" / f"{clip}.avi").unlink()
    (videos / "1012_Unbreakable" / f"{clip}.avi").symlink_to(other)
    with pytest.raises(ValueError, match="outside"):
        lsmdc_video_path(videos, clip)


# ------------------------------------------------------------------------------------------ ties


@pytest.fixture(scope="module")
def metrics():
    try:
        return importlib.import_module("psbench.retrieval.metrics")
    except ImportError as exc:
        pytest.skip(f"psbench.retrieval.metrics is not importable yet ({exc})")


def text_scores(split: RetrievalSplit, seed: int, dim: int = 16) -> np.ndarray:
    """(captions, videos) scores where identical caption strings get bit-identical rows."""
    rng = np.random.default_rng(seed)
    texts = sorted({c.text for c in split.captions})
    row_of = {t: i for i, t in enumerate(texts)}
    emb_t = rng.standard_normal((len(texts), dim))
    emb_v = rng.standard_normal((len(split.video_ids), dim))
    unique = emb_t @ emb_v.T  # (unique texts, videos)
    return unique[[row_of[c.text] for c in split.captions]]


def tiebreak_oracle(candidates: np.ndarray, truth: int, ks: tuple[int, ...]) -> tuple[list[float], float]:
    """Exact expectation over uniformly random tie-breaking, by sorting: with m tied candidates
    (truth included), the m cyclic shifts of one tie order put the truth at each tied place once."""
    tied = np.flatnonzero(candidates == candidates[truth])
    m = len(tied)
    hits, ranks = np.zeros(len(ks)), 0.0
    for shift in range(m):
        key = np.zeros(len(candidates))
        key[tied] = (np.arange(m) + shift) % m
        order = np.lexsort((key, -candidates))  # by descending score, then the tie key
        rank = int(np.flatnonzero(order == truth)[0])
        hits += [rank < k for k in ks]
        ranks += rank
    return list(hits / m), ranks / m


def check_expected_rule(metrics, matrix: np.ndarray, ranks, ks: tuple[int, ...] = (1, 5, 10)) -> None:
    """metrics_from_ranks(expected) equals the tie-break oracle on a (queries, candidates) matrix
    whose ground truth is the diagonal."""
    per_query = [tiebreak_oracle(matrix[q], q, ks) for q in range(matrix.shape[0])]
    got = metrics.metrics_from_ranks(ranks, "expected", ks)
    for i, k in enumerate(ks):
        assert got[f"R{k}"] == pytest.approx(100 * np.mean([h[i] for h, _ in per_query]))
    mean_ranks = np.array([r for _, r in per_query])
    assert got["MnR"] == pytest.approx(mean_ranks.mean() + 1)
    assert got["MdR"] == pytest.approx(np.median(mean_ranks) + 1)


@pytest.mark.parametrize("dataset", ["msrvtt", "lsmdc"])
def test_duplicated_captions_tie_in_v2t_and_the_expected_rule_scores_them(
    annotations: Path, metrics, dataset: str
) -> None:
    split = split_of(annotations, dataset, "test")
    scores = text_scores(split, seed=0)  # (1000 captions, 1000 videos), diagonal ground truth
    cv = split.caption_video_index()
    v2t = metrics.v2t_ranks(scores, cv, rule="group_max")
    count = Counter(c.text for c in split.captions)
    expected_ties = [count[split.captions[i].text] - 1 for i in range(len(split.captions))]
    assert v2t.ties.tolist() == expected_ties  # a video's caption ties with each identical string
    assert sum(expected_ties) > 0
    check_expected_rule(metrics, scores.T, v2t)  # video rows over caption columns
    t2v = metrics.t2v_ranks(scores, cv)
    assert t2v.ties.sum() == 0  # distinct videos never tie for a caption here
    opt, pes = (metrics.metrics_from_ranks(v2t, rule) for rule in ("optimistic", "pessimistic"))
    exp = metrics.metrics_from_ranks(v2t, "expected")
    assert opt["MnR"] < exp["MnR"] < pes["MnR"]


@pytest.mark.slow  # scores all 27,763 MSVD captions
def test_msvd_shared_caption_strings_tie_and_the_expected_rule_scores_them(annotations: Path, metrics) -> None:
    split = split_of(annotations, "msvd", "test")
    shared = duplicated(split)
    scores = text_scores(split, seed=1)  # (27763, 670)
    bonus = np.array([5.0 if c.text in shared and len(shared[c.text]) > 1 else 0.0 for c in split.captions])
    scores = scores + bonus[:, None]  # a video's best own caption is then a string shared with other videos
    cv = np.asarray(split.caption_video_index())
    # strict rule: the best own caption ties with every other video's caption of the same string
    strict = metrics.v2t_ranks(scores, cv, rule="all_captions")
    texts = np.array([c.text for c in split.captions], dtype=object)
    want = []
    for v in range(len(split.video_ids)):
        own = np.flatnonzero(cv == v)
        best = own[np.argmax(scores[own, v])]
        others = (cv != v) & (scores[:, v] == scores[best, v])
        assert set(texts[others]) <= {texts[best]}  # ties come only from the identical string
        want.append(int(others.sum()))
    assert strict.ties.tolist() == want and sum(want) > 0
    # lenient rule: ties between caption groups whose best caption is the same string
    order = np.argsort(cv, kind="stable")
    grouped = np.maximum.reduceat(scores[order], np.searchsorted(cv[order], np.arange(670)), axis=0)  # (670, 670)
    lenient = metrics.v2t_ranks(scores, cv, rule="group_max")
    assert lenient.ties.sum() > 0
    check_expected_rule(metrics, grouped.T, lenient)  # video rows over group columns, own group on the diagonal


# ------------------------------------------------------------------------------------------ protocols

REAL_PROTOCOLS = [p for p in list_protocols() if load_protocol(p)["data"]["dataset"] in ("msrvtt", "msvd", "lsmdc")]
FAMILIES = ("meanpool", "tokenshift", "videoproxy", "xpool", "promptswitch")
#: variant -> (base, the resolved keys allowed to differ)
VARIANTS = {
    "msrvtt-1ka-official-selection": ("msrvtt-1ka", {"train.selection"}),
    "msrvtt-1ka-dsl": ("msrvtt-1ka", {"test.dsl", "test.dsl_tau"}),
    "msvd-strict-v2t": ("msvd", {"test.v2t_rule"}),
    "lsmdc-999": ("lsmdc", {"data.exclude_videos", "data.dedupe_train_by_video", "data.test_videos"}),
    "msrvtt-1ka-b16": ("msrvtt-1ka", {"backbone.arch"}),
    "msvd-b16": ("msvd", {"backbone.arch"}),
    "lsmdc-b16": ("lsmdc", {"backbone.arch"}),
}
#: protocols whose first version is newer than the others' second
FIRST_VERSIONS = {"msrvtt-1ka-b16", "msvd-b16", "lsmdc-b16"}


def method_classes() -> dict[str, type]:
    """Every catalogued method's class."""
    from psbench.catalog import METHOD_TABLE, method_class

    return {name: method_class(name) for name in METHOD_TABLE}


def flat(config: object) -> dict[str, object]:
    d = dataclasses.asdict(config)
    out = {}
    for section in ("data", "backbone", "train", "test"):
        out.update({f"{section}.{k}": v for k, v in d[section].items()})
    out.update({f"options.{k}": v for k, v in d["options"].items()})
    return out


def test_the_real_protocols_exist() -> None:
    assert {"msrvtt-1ka", "msvd", "lsmdc", *VARIANTS} <= set(REAL_PROTOCOLS)


@pytest.mark.parametrize("name", REAL_PROTOCOLS)
def test_protocol_resolves_for_every_method(name: str) -> None:
    proto = load_protocol(name)
    assert proto["version"] == (1 if name in FIRST_VERSIONS else 2) and proto["name"] == name
    assert len(proto["seeds"]) >= 3
    assert set(proto["method"]) == set(FAMILIES)
    classes = method_classes()
    for method in sorted(set(FAMILIES) | set(classes)):
        cfg = resolve(proto, method)
        arch = "ViT-B-16-quickgelu" if name.endswith("-b16") else "ViT-B-32-quickgelu"
        assert cfg.backbone.arch == arch and cfg.backbone.weights == ""
        assert cfg.train.resolution == cfg.test.resolution == 224
        assert cfg.test.tie_rule == "expected"
        assert cfg.test.dsl == name.endswith("-dsl")
        official = name.endswith("-official-selection")
        assert cfg.train.selection == ("test_official" if official else "val" if name.startswith("msvd") else "last")
        if method_family(method) == "promptswitch":  # frames come in chunks of num_prompts
            prompts = cfg.options["num_prompts"]
            assert cfg.train.frames % prompts == 0 and cfg.test.frames % prompts == 0
        if method in classes:  # the options must be accepted by the method's constructor
            from psbench.catalog import method_options

            assert set(cfg.options) <= set(method_options(method)), (name, method)


@pytest.mark.parametrize("name", REAL_PROTOCOLS)
def test_protocol_data_and_references(name: str, annotations: Path) -> None:
    proto = load_protocol(name)
    data = resolve(proto, "meanpool").data
    for key, file in data.files.items():  # every named annotation file that is released publicly exists
        if (annotations / data.dataset / file).is_file():
            continue
        assert file in ("MSRVTT_data.json", "LSMDC16_annos_training.csv", "LSMDC16_annos_val.csv"), (key, file)
    test = load_split(data, annotations / data.dataset, data.test_split)
    want = {"msrvtt": 1000, "msvd": 670, "lsmdc": 999 if name == "lsmdc-999" else 1000}[data.dataset]
    assert len(test.video_ids) == want and data.test_videos == want
    refs = proto.get("reference", [])
    assert refs or name == "msvd-b16", f"{name}: no published reference numbers"  # no B/16 MSVD row is published
    for ref in refs:
        assert ref["method"] in FAMILIES and ref["direction"] in ("t2v", "v2t") and ref["source"]
        assert all(isinstance(ref[k], float) for k in ("R1", "R5", "R10", "MdR", "MnR") if k in ref)
        assert ("DSL" in ref["post_processing"]) == name.endswith("-dsl")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_differ_from_their_base_only_where_named(variant: str) -> None:
    base_name, allowed = VARIANTS[variant]
    base, var = load_protocol(base_name), load_protocol(variant)
    assert base["seeds"] == var["seeds"]
    for method in FAMILIES:
        a, b = flat(resolve(base, method)), flat(resolve(var, method))
        changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert changed and changed <= allowed, (variant, method, changed)


def test_readme_lists_every_protocol_and_its_reference_numbers() -> None:
    readme = (Path(load_protocol("msvd")["_path"]).parent / "README.md").read_text()
    for name in list_protocols():
        assert f"`{name}`" in readme, f"protocols/README.md does not list {name}"
    for name in REAL_PROTOCOLS:
        for ref in load_protocol(name).get("reference", []):
            assert f"| {ref['R1']} |" in readme, (name, ref["method"], ref["R1"])

"""ActivityNet Captions and DiDeMo (paragraph-to-video retrieval): the loaders on the released annotation
files (counts as CLIP4Clip's loaders give them), the paragraph rule, the file naming, malformed input."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from psbench.data.activitynet import activitynet_video_path, load_activitynet_split
from psbench.data.datasets import DATASETS, load_split
from psbench.data.didemo import didemo_video_path, load_didemo_split
from psbench.data.paths import AnnotationError
from psbench.data.split import RetrievalSplit
from psbench.protocol import DataConfig
from tests.paths import SHARED_ANNOTATIONS


@pytest.fixture(scope="module")
def shared() -> Path:
    if not (SHARED_ANNOTATIONS / "activitynet" / "val_1.json").is_file():
        pytest.skip(f"shared annotation files not found in {SHARED_ANNOTATIONS} (they are not part of the project)")
    return SHARED_ANNOTATIONS


@pytest.fixture(scope="module")
def activitynet_test(shared: Path) -> RetrievalSplit:
    return load_split(DataConfig(dataset="activitynet"), shared / "activitynet", "test")


def test_paragraph_datasets_are_registered() -> None:
    assert "activitynet" in DATASETS and "didemo" in DATASETS


def test_activitynet_test_is_val_1_with_its_ids_one_paragraph_per_video(shared: Path, activitynet_test) -> None:
    split = activitynet_test
    # val_ids.json lists 4,925 ids, val_1.json has 4,917 entries, 4,916 are in both (CLIP4Clip's test set)
    assert len(split.video_ids) == len(split.captions) == 4916
    assert split.caption_video_index() == list(range(4916))
    raw = json.loads((shared / "activitynet" / "val_1.json").read_text())
    first = split.video_ids[0]
    assert split.captions[0].text == " ".join(raw[first]["sentences"])  # file order, no stripping
    assert sum(len(raw[v]["sentences"]) for v in split.video_ids) == 17500
    bad = (shared / "activitynet" / "bad_vids.txt").read_text().split()
    assert len(bad) == 3 and not set(bad) & set(split.video_ids)


@pytest.mark.slow  # reads the 4 MB training file
def test_activitynet_train_has_one_paragraph_per_listed_video(shared: Path) -> None:
    train = load_split(DataConfig(dataset="activitynet"), shared / "activitynet", "train")
    # train_ids.json lists 10,022 ids, train.json has 10,009 entries, 10,007 are in both
    assert len(train.video_ids) == len(train.captions) == 10007


def test_didemo_test_concatenates_every_description_of_a_video(shared: Path) -> None:
    split = load_split(DataConfig(dataset="didemo"), shared / "didemo", "test")
    rows = json.loads((shared / "didemo" / "test_data.json").read_text())
    assert len(rows) == 4021
    assert len(split.video_ids) == len(split.captions) == 1037
    texts: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        texts[row["video"]].append(row["description"])
    assert [c.text for c in split.captions] == [" ".join(texts[v]) for v in split.video_ids]
    assert split.video_ids == list(dict.fromkeys(row["video"] for row in rows))  # first-appearance order
    val = load_split(DataConfig(dataset="didemo"), shared / "didemo", "val")
    assert len(val.video_ids) == 1094


def test_activitynet_finds_either_naming_and_refuses_both(tmp_path: Path) -> None:
    (tmp_path / "v_abc.mp4").write_bytes(b"x")
    (tmp_path / "def.mkv").write_bytes(b"x")
    assert activitynet_video_path(tmp_path, "v_abc") == tmp_path / "v_abc.mp4"  # TS2-Net / Prompt Switch naming
    assert activitynet_video_path(tmp_path, "v_def") == tmp_path / "def.mkv"  # CLIP4Clip's naming
    assert activitynet_video_path(tmp_path, "v_ghi") == tmp_path / "v_ghi.mp4"  # expected, missing
    (tmp_path / "abc.avi").write_bytes(b"x")
    with pytest.raises(AnnotationError, match="'v_abc' exists twice"):
        activitynet_video_path(tmp_path, "v_abc")


def test_didemo_finds_the_original_name_or_the_compressed_mp4(tmp_path: Path) -> None:
    (tmp_path / "a@N01_1_x.mov").write_bytes(b"x")
    (tmp_path / "b@N02_2_y.mp4").write_bytes(b"x")  # what `psbench data compress` writes for b@N02_2_y.m4v
    assert didemo_video_path(tmp_path, "a@N01_1_x.mov") == tmp_path / "a@N01_1_x.mov"
    assert didemo_video_path(tmp_path, "b@N02_2_y.m4v") == tmp_path / "b@N02_2_y.mp4"
    assert didemo_video_path(tmp_path, "c@N03_3_z.avi") == tmp_path / "c@N03_3_z.avi"  # expected, missing


def test_didemo_list_restricts_the_split(tmp_path: Path) -> None:
    rows = [
        {"video": "one.mov", "description": "a dog runs."},
        {"video": "two.avi", "description": "a cat sits."},
        {"video": "one.mov", "description": " it stops."},
    ]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    (tmp_path / "list.txt").write_text("one.mov\n")
    full = load_didemo_split(tmp_path / "data.json", tmp_path, "test")
    assert [(c.video_id, c.text) for c in full.captions] == [
        ("one.mov", "a dog runs.  it stops."),
        ("two.avi", "a cat sits."),
    ]
    listed = load_didemo_split(tmp_path / "data.json", tmp_path, "test", tmp_path / "list.txt")
    assert listed.video_ids == ["one.mov"]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"v_a": {"duration": 3.0}}, "entry 'v_a': expected a non-empty 'sentences' list"),
        ({"v_a": {"sentences": ["ok", "  "]}}, "entry 'v_a': empty or non-string sentence"),
        ([], "expected an object"),
    ],
)
def test_malformed_activitynet_captions_name_the_file_and_entry(tmp_path: Path, content: object, message: str) -> None:
    (tmp_path / "val_1.json").write_text(json.dumps(content))
    (tmp_path / "val_ids.json").write_text(json.dumps(["v_a"]))
    with pytest.raises(AnnotationError, match=message) as info:
        load_activitynet_split(tmp_path / "val_1.json", tmp_path / "val_ids.json", tmp_path, "test")
    assert str(tmp_path / "val_1.json") in str(info.value)


def test_malformed_ids_and_moments_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "val_1.json").write_text(json.dumps({"v_a": {"sentences": ["ok"]}}))
    (tmp_path / "val_ids.json").write_text(json.dumps(["v_a", "v_a"]))
    with pytest.raises(AnnotationError, match=r"val_ids.json item 1: video id 'v_a' already listed at item 0"):
        load_activitynet_split(tmp_path / "val_1.json", tmp_path / "val_ids.json", tmp_path, "test")
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "../x.mov", "description": "a"}]))
    with pytest.raises(AnnotationError, match=r"test_data.json item 0"):
        load_didemo_split(tmp_path / "test_data.json", tmp_path, "test")
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "x.mov", "description": ""}]))
    with pytest.raises(AnnotationError, match=r"test_data.json item 0: empty or missing 'description'"):
        load_didemo_split(tmp_path / "test_data.json", tmp_path, "test")


# ------------------------------------------------------------------------------------------ protocols

PARAGRAPH_PROTOCOLS = {"activitynet": 4916, "didemo": 1037}


@pytest.mark.parametrize("name", sorted(PARAGRAPH_PROTOCOLS))
def test_paragraph_protocol_resolves_for_every_method(name: str) -> None:
    from psbench.catalog import METHOD_TABLE, method_options
    from psbench.protocol import load_protocol, method_family, resolve

    proto = load_protocol(name)
    assert proto["name"] == name and proto["version"] == 1 and len(proto["seeds"]) >= 3
    assert set(proto["method"]) == {"meanpool", "tokenshift", "videoproxy", "xpool", "promptswitch"}
    for method in METHOD_TABLE:
        cfg = resolve(proto, method)
        assert cfg.data.dataset == name and cfg.data.skip_missing  # the official code leaves missing videos out
        assert cfg.data.test_videos == PARAGRAPH_PROTOCOLS[name]
        assert cfg.train.selection == ("val" if name == "didemo" else "last")
        assert cfg.test.v2t_rule == "group_max" and cfg.test.tie_rule == "expected" and not cfg.test.dsl
        assert set(cfg.options) <= set(method_options(method)), (name, method)
        family = method_family(method)
        if family in ("meanpool", "tokenshift"):  # CLIP4Clip's paragraph setting
            assert (cfg.train.frames, cfg.test.frames, cfg.train.max_words, cfg.test.max_words) == (64, 64, 64, 64)
        if family == "promptswitch":  # frames come in chunks of num_prompts
            prompts = cfg.options["num_prompts"]
            assert cfg.train.frames % prompts == 0 and cfg.test.frames % prompts == 0


@pytest.mark.slow  # loads both test splits through their protocols
@pytest.mark.parametrize("name", sorted(PARAGRAPH_PROTOCOLS))
def test_paragraph_protocol_counts_and_references(name: str, shared: Path) -> None:
    import csv

    from psbench.protocol import load_protocol, resolve

    proto = load_protocol(name)
    data = resolve(proto, "meanpool").data
    test = load_split(data, shared / data.dataset, data.test_split)
    assert len(test.video_ids) == PARAGRAPH_PROTOCOLS[name]
    published = SHARED_ANNOTATIONS.parent / "reference" / "published_results.csv"
    rows = list(csv.DictReader(published.open())) if published.is_file() else []
    label = {"activitynet": "ActivityNet", "didemo": "DiDeMo"}[name]
    for ref in proto["reference"]:  # every reference row is a ViT-B/32 row of the shared table, number for number
        match = [
            r for r in rows if r["dataset"] == label and r["method"] == "CLIP4Clip" and r["backbone"] == "ViT-B/32"
        ]
        if rows:
            assert match, (name, ref)
            for key in ("R1", "R5", "R10", "MdR", "MnR"):
                if key in ref:
                    assert float(match[0][key]) == ref[key], (name, key)

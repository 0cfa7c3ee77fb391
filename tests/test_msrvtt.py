"""MSR-VTT annotation parsers: the real released files, a small MSRVTT_data.json, malformed files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from psbench.data.msrvtt import AnnotationError, load_msrvtt_test, load_msrvtt_train
from psbench.data.paths import VIDEO_EXTENSIONS, find_video, safe_video_id
from tests.paths import SHARED_ANNOTATIONS

ANNOTATIONS = SHARED_ANNOTATIONS / "msrvtt"
TEST_CSV = ANNOTATIONS / "MSRVTT_JSFUSION_test.csv"
real_files = pytest.mark.skipif(not TEST_CSV.is_file(), reason="shared MSR-VTT annotations not available")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def one_sentence_each(path: Path, ids: list[str]) -> Path:
    sentences = [{"video_id": v, "caption": f"caption of {v}", "sen_id": i} for i, v in enumerate(ids)]
    return write(path, json.dumps({"videos": [], "sentences": sentences}))


# ------------------------------------------------------------------------------------------ real files


@real_files
def test_real_1ka_test_has_1000_pairs(tmp_path: Path) -> None:
    split = load_msrvtt_test(TEST_CSV, tmp_path / "videos")
    assert len(split.captions) == 1000
    assert len(split.video_ids) == 1000
    assert split.caption_video_index() == list(range(1000))  # one caption per video, diagonal ground truth
    numbers = sorted(int(v.removeprefix("video")) for v in split.video_ids)
    assert (numbers[0], numbers[-1]) == (7020, 9975)
    assert split.video_ids[0] == "video9770" and split.captions[0].text == "a person is connecting something to system"
    # no video on disk: the expected .mp4 path, no error at parse time
    assert split.video_paths["video9770"] == tmp_path / "videos" / "video9770.mp4"


@real_files
def test_real_1ka_duplicated_sentences_match_spec() -> None:
    split = load_msrvtt_test(TEST_CSV, Path("videos"))
    counts = Counter(c.text for c in split.captions)
    repeated = {text: n for text, n in counts.items() if n > 1}
    # measured: 4 strings over 9 rows, as the spec (§8.1) says
    assert len(repeated) == 4
    assert sum(repeated.values()) == 9
    assert repeated["a man playing video games"] == 3


@real_files
@pytest.mark.parametrize(
    ("name", "expected"),
    [("MSRVTT_train.9k.csv", 9000), pytest.param("MSRVTT_train.7k.csv", 7010, marks=pytest.mark.slow)],
)
def test_real_train_id_lists(tmp_path: Path, name: str, expected: int) -> None:
    ids_csv = ANNOTATIONS / name
    ids = [line.strip() for line in ids_csv.read_text().splitlines()[1:] if line.strip()]
    data_json = one_sentence_each(tmp_path / "MSRVTT_data.json", ids + ["video9770"])
    split = load_msrvtt_train(data_json, ids_csv, tmp_path)
    assert len(split.video_ids) == expected
    assert split.video_ids == ids  # csv order
    assert len(split.captions) == expected  # the test video's sentence is skipped
    test_ids = set(load_msrvtt_test(TEST_CSV, tmp_path).video_ids)
    assert not test_ids & set(split.video_ids)


# ------------------------------------------------------------------------------------------ small files


def test_train_keeps_every_pair_in_file_order(tmp_path: Path) -> None:
    ids_csv = write(tmp_path / "train.csv", "video_id\nvideo2\nvideo0\n")
    sentences = [
        ("video0", "a dog runs"),
        ("video1", "not in the split"),
        ("video2", "a cat sleeps"),
        ("video0", "a dog is running, fast"),
        ("video2", "a sleeping cat"),
        ("video0", "a dog"),
    ]
    entries = [{"video_id": v, "caption": c, "sen_id": i} for i, (v, c) in enumerate(sentences)]
    data = {"videos": [], "sentences": entries}
    data_json = write(tmp_path / "MSRVTT_data.json", json.dumps(data))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "video2.webm").write_bytes(b"x")
    split = load_msrvtt_train(data_json, ids_csv, tmp_path / "videos", name="mytrain")
    assert split.name == "mytrain"
    assert split.video_ids == ["video2", "video0"]
    expected = [(v, c) for v, c in sentences if v != "video1"]
    assert [(c.video_id, c.text) for c in split.captions] == expected
    assert split.caption_video_index() == [1, 0, 1, 0, 1]
    assert split.video_paths == {
        "video2": tmp_path / "videos" / "video2.webm",
        "video0": tmp_path / "videos" / "video0.mp4",
    }


def test_jsfusion_multi_caption_rows_and_quoting(tmp_path: Path) -> None:
    text = (
        "key,vid_key,video_id,sentence\n"
        "ret0,msr1,v1,a red circle moves left\n"
        'ret1,msr2,v2,"a blue square appears, then it moves"\n'
        "\n"
        "ret2,msr1,v1,first a red circle moves left\n"
    )
    split = load_msrvtt_test(write(tmp_path / "t.csv", text), tmp_path, name="val")
    assert split.video_ids == ["v1", "v2"]  # first appearance
    assert [c.text for c in split.captions] == [
        "a red circle moves left",
        "a blue square appears, then it moves",
        "first a red circle moves left",
    ]
    assert split.caption_video_index() == [0, 1, 0]


# ------------------------------------------------------------------------------------------ malformed


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("key,vid_key,sentence\nret0,msr1,hello\n", 1, "missing column(s) video_id"),
        ("key,vid_key,video_id,sentence\nret0,msr1,v1,ok\nret1,msr2,v2\n", 3, "3 field(s), expected 4"),
        ("key,vid_key,video_id,sentence\nret0,msr1,v1,a,b\n", 2, "5 field(s)"),
        (
            "key,vid_key,video_id,sentence\nret0,msr1,v1,ok\nret1,msr2,v2,ok\nret2,msr3,v3,  \n",
            4,
            "empty caption",
        ),
        ("key,vid_key,video_id,sentence\nret0,msr1,../etc/passwd,x\n", 2, "path separator"),
        ("key,vid_key,video_id,sentence\nret0,msr1,,x\n", 2, "is empty"),
    ],
)
def test_malformed_jsfusion_names_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path / "bad_test.csv", text)
    with pytest.raises(AnnotationError) as err:
        load_msrvtt_test(path, tmp_path)
    assert f"{path} line {line}" in str(err.value)
    assert words in str(err.value)


def test_empty_csv_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", "")
    with pytest.raises(AnnotationError, match="empty file"):
        load_msrvtt_test(path, tmp_path)


def test_malformed_train_files(tmp_path: Path) -> None:
    good_json = one_sentence_each(tmp_path / "data.json", ["v1", "v2"])
    good_csv = write(tmp_path / "ids.csv", "video_id\nv1\nv2\n")

    dup = write(tmp_path / "dup.csv", "video_id\nv1\nv2\nv1\n")
    with pytest.raises(AnnotationError, match=rf"{re.escape(str(dup))} line 4: video id 'v1' already listed on line 2"):
        load_msrvtt_train(good_json, dup, tmp_path)

    nocol = write(tmp_path / "nocol.csv", "id\nv1\n")
    with pytest.raises(AnnotationError, match=rf"{re.escape(str(nocol))} line 1: missing column"):
        load_msrvtt_train(good_json, nocol, tmp_path)

    broken = write(tmp_path / "broken.json", '{"sentences": [\n{"video_id": "v1",\n "caption": }\n]}')
    expected = rf"{re.escape(str(broken))}: invalid JSON: Expecting value at line 3 column 13"
    with pytest.raises(AnnotationError, match=expected):
        load_msrvtt_train(broken, good_csv, tmp_path)

    no_list = write(tmp_path / "nolist.json", '{"videos": []}')
    with pytest.raises(AnnotationError, match=rf"{re.escape(str(no_list))}: expected an object with a 'sentences'"):
        load_msrvtt_train(no_list, good_csv, tmp_path)

    empty = write(
        tmp_path / "empty.json",
        json.dumps({"sentences": [{"video_id": "v1", "caption": "x"}, {"video_id": "v2", "caption": ""}]}),
    )
    with pytest.raises(AnnotationError, match=rf"{re.escape(str(empty))} sentences\[1\]: empty caption"):
        load_msrvtt_train(empty, good_csv, tmp_path)

    no_caption = write(tmp_path / "nocap.json", json.dumps({"sentences": [{"video_id": "v1"}]}))
    with pytest.raises(AnnotationError, match=r"sentences\[0\]: expected an object"):
        load_msrvtt_train(no_caption, good_csv, tmp_path)

    partial = one_sentence_each(tmp_path / "partial.json", ["v1"])
    expected = f"{partial}: no sentence for 1 video(s) listed in {good_csv}, e.g. 'v2'"
    with pytest.raises(AnnotationError, match=re.escape(expected)):
        load_msrvtt_train(partial, good_csv, tmp_path)


# ------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("bad", ["", "  ", "..", ".", "a/b", "a\\b", "/abs", "C:video", "x\x00y", "..hidden"])
def test_safe_video_id_rejects_escapes(bad: str) -> None:
    with pytest.raises(AnnotationError) as err:
        safe_video_id(bad, "ann.csv line 7")
    assert str(err.value).startswith("ann.csv line 7: video id ")
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("good", ["video123", "synth00001", "v-1_a.b", "1012_Unbreakable_00.05.16.065-00.05.21.941"])
def test_safe_video_id_accepts_plain_names(good: str) -> None:
    assert safe_video_id(good, "x") == good


def test_find_video_extension_order_and_containment(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    assert find_video(videos, "a") is None
    for ext in reversed(VIDEO_EXTENSIONS[1:]):
        (videos / f"a{ext}").write_bytes(b"x")
    assert find_video(videos, "a") == videos / "a.avi"
    (videos / "a.mp4").write_bytes(b"x")
    assert find_video(videos, "a") == videos / "a.mp4"
    (videos / "b.mp4").mkdir()  # a folder is not a video
    assert find_video(videos, "b") is None

    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"x")
    (videos / "link.mp4").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        find_video(videos, "link")
    with pytest.raises(AnnotationError):
        find_video(videos, "../outside")

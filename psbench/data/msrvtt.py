"""MSR-VTT annotation formats (spec §8.1), shared by MSR-VTT and the synthetic set.

Two formats:
- training: a csv of video ids (column ``video_id``, e.g. ``MSRVTT_train.9k.csv``) plus
  ``MSRVTT_data.json`` whose ``sentences`` entries (``video_id``, ``caption``) give the captions;
- JSFUSION test format: ``key,vid_key,video_id,sentence``, one caption per row (1k-A test:
  1,000 rows, 1,000 videos). Rows sharing a ``video_id`` give that video several captions.

A missing video file is not an error here (its path is the expected ``<video_dir>/<id>.mp4``);
a malformed file is: :class:`AnnotationError` names the file and the 1-based line (header = 1).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psbench.data.paths import AnnotationError, find_video, safe_video_id
from psbench.data.split import Caption, RetrievalSplit
from psbench.files.jsonio import decode_error_message

__all__ = ["AnnotationError", "load_msrvtt_test", "load_msrvtt_train", "read_csv_rows", "video_path"]

JSFUSION_COLUMNS = ("key", "vid_key", "video_id", "sentence")


def video_path(video_dir: Path, video_id: str) -> Path:
    """The existing file of ``video_id`` in ``video_dir``, or the expected ``<video_dir>/<id>.mp4``."""
    return find_video(video_dir, video_id) or Path(video_dir) / f"{video_id}.mp4"


def read_csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for every non-blank data row of a comma-separated file with a header.

    Raises AnnotationError naming ``path`` and the line for a missing column, a row whose number of
    fields differs from the header's, or undecodable text.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise AnnotationError(f"{path}: empty file, expected a header with columns {', '.join(required)}")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise AnnotationError(
                    f"{path} line 1: missing column(s) {', '.join(missing)}; header is {','.join(header)}"
                )
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise AnnotationError(
                        f"{path} line {reader.line_num}: {len(fields)} field(s), expected {len(header)} "
                        f"({','.join(header)})"
                    )
                yield reader.line_num, dict(zip(header, fields, strict=True))
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not valid UTF-8 text ({err})") from err
    except csv.Error as err:
        raise AnnotationError(f"{path}: malformed csv ({err})") from err


def _caption_text(text: Any, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise AnnotationError(f"{where}: empty caption")
    return text


def _read_train_ids(ids_csv: Path) -> list[str]:
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in read_csv_rows(ids_csv, ("video_id",)):
        vid = safe_video_id(row["video_id"].strip(), f"{ids_csv} line {line}")
        if vid in first_line:
            raise AnnotationError(f"{ids_csv} line {line}: video id {vid!r} already listed on line {first_line[vid]}")
        first_line[vid] = line
        ids.append(vid)
    return ids


def read_annotation_json(path: Path) -> Any:
    """The parsed JSON of an annotation file; AnnotationError naming the file (and line) if it is not."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(decode_error_message(path, err)) from err
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not valid UTF-8 text ({err})") from err


def _read_sentences(data_json: Path) -> list[dict[str, Any]]:
    data = read_annotation_json(data_json)
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list):
        raise AnnotationError(f"{data_json}: expected an object with a 'sentences' list")
    return sentences


def load_msrvtt_train(data_json: Path, ids_csv: Path, video_dir: Path, name: str = "train") -> RetrievalSplit:
    """Training split: the videos of ``ids_csv`` with every caption ``data_json`` gives them.

    Gallery order is the csv order; captions keep the json order. Sentences of videos not in the csv
    are skipped; a csv video without any sentence is an error (the two files do not match).
    """
    video_dir = Path(video_dir)
    ids = _read_train_ids(ids_csv)
    wanted = set(ids)
    captions: list[Caption] = []
    for i, entry in enumerate(_read_sentences(data_json)):
        where = f"{data_json} sentences[{i}]"
        if not isinstance(entry, dict) or "video_id" not in entry or "caption" not in entry:
            raise AnnotationError(f"{where}: expected an object with 'video_id' and 'caption'")
        vid = entry["video_id"]
        if vid in wanted:
            captions.append(Caption(_caption_text(entry["caption"], where), vid))
    described = {c.video_id for c in captions}
    without = [v for v in ids if v not in described]
    if without:
        raise AnnotationError(
            f"{data_json}: no sentence for {len(without)} video(s) listed in {ids_csv}, e.g. {without[0]!r}"
        )
    return RetrievalSplit(name, ids, captions, {v: video_path(video_dir, v) for v in ids})


def load_msrvtt_test(test_csv: Path, video_dir: Path, name: str = "test") -> RetrievalSplit:
    """JSFUSION split: one caption per row, gallery = distinct ``video_id`` in order of first appearance."""
    video_dir = Path(video_dir)
    ids: list[str] = []
    seen: set[str] = set()
    captions: list[Caption] = []
    for line, row in read_csv_rows(test_csv, JSFUSION_COLUMNS):
        where = f"{test_csv} line {line}"
        vid = safe_video_id(row["video_id"].strip(), where)
        if vid not in seen:
            seen.add(vid)
            ids.append(vid)
        captions.append(Caption(_caption_text(row["sentence"], where), vid))
    return RetrievalSplit(name, ids, captions, {v: video_path(video_dir, v) for v in ids})

"""MSVD annotation format (spec §8.2): ``captions_msvd.json`` plus one id list per split.

- ``captions_msvd.json``: ``{video_id: [caption, ...]}`` for all 1,970 videos;
- ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt``: one video id per line (1,200 / 100 / 670).

A split's gallery is its list, in file order (each video once); its captions are every caption of
every listed video, grouped by video in list order (test: 27,763 captions). A malformed file raises
:class:`AnnotationError` naming the file (and the 1-based line where there is one).
"""

from __future__ import annotations

from pathlib import Path

from psbench.data.msrvtt import read_annotation_json, video_path
from psbench.data.paths import AnnotationError, safe_video_id
from psbench.data.split import Caption, RetrievalSplit

__all__ = ["load_msvd_split", "read_msvd_captions", "read_video_list"]


def read_video_list(path: Path) -> list[str]:
    """Video ids of a split list, one per line; blank lines are skipped, a repeated id is an error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not valid UTF-8 text ({err})") from err
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        vid = line.strip()
        if not vid:
            continue
        where = f"{path} line {number}"
        if any(ch.isspace() for ch in vid):
            raise AnnotationError(f"{where}: expected one video id per line, got {line!r}")
        safe_video_id(vid, where)
        if vid in first_line:
            raise AnnotationError(f"{where}: video id {vid!r} already listed on line {first_line[vid]}")
        first_line[vid] = number
        ids.append(vid)
    if not ids:
        raise AnnotationError(f"{path}: no video ids")
    return ids


def read_msvd_captions(path: Path) -> dict[str, list[str]]:
    """``{video_id: [caption, ...]}``; every value must be a non-empty list of non-empty strings."""
    path = Path(path)
    data = read_annotation_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected an object {{video_id: [caption, ...]}}")
    for vid, caps in data.items():
        where = f"{path} entry {vid!r}"
        if not isinstance(caps, list) or not caps:
            raise AnnotationError(f"{where}: expected a non-empty list of captions")
        for i, text in enumerate(caps):
            if not isinstance(text, str) or not text.strip():
                raise AnnotationError(f"{where}[{i}]: empty or non-string caption")
    return data


def load_msvd_split(captions_json: Path, list_txt: Path, video_dir: Path, name: str) -> RetrievalSplit:
    """One MSVD split: the videos of ``list_txt`` with all their captions from ``captions_json``."""
    captions_by_video = read_msvd_captions(captions_json)
    ids = read_video_list(list_txt)
    without = [v for v in ids if v not in captions_by_video]
    if without:
        raise AnnotationError(
            f"{captions_json}: no captions for {len(without)} video(s) listed in {list_txt}, e.g. {without[0]!r}"
        )
    captions = [Caption(text, vid) for vid in ids for text in captions_by_video[vid]]
    return RetrievalSplit(name, ids, captions, {v: video_path(video_dir, v) for v in ids})

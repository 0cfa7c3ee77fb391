"""DiDeMo in the field's paragraph-to-video setting (CLIP4Clip's loader, checked at its source).

Files (LocalizingMoments release): ``train_data.json`` / ``val_data.json`` / ``test_data.json``, each a
list of moment annotations ``{"annotation_id", "description", "times", "video", "num_segments",
"dl_link"}``; test: 4,021 annotations over 1,037 videos. Optionally ``<split>_list`` (a text file of video
names, one per line, as collaborative-experts distributes): the split is then restricted to it.

Each video has ONE query: the descriptions of all its annotations, in file order, joined with one space
(CLIP4Clip: every annotation row kept, none de-duplicated). A video's id is its ``video`` field, the
original file name with its extension (CLIP4Clip matches file names exactly); after ``psbench data
compress`` the same name with ``.mp4`` is found. Gallery order: first appearance in the file.

Time span: CLIP4Clip computes each moment's span and then overwrites it with 0 .. 31 s for every video
("videos were truncated to 30 s during annotation"), i.e. it reads the first 32 seconds at one frame per
second. psbench samples over the whole file; for a file longer than 32 s that is a deviation, written in
the protocol.
"""

from __future__ import annotations

from pathlib import Path, PurePath

from psbench.data.msrvtt import read_annotation_json
from psbench.data.msvd import read_video_list
from psbench.data.paths import AnnotationError, find_video, safe_video_id
from psbench.data.split import Caption, RetrievalSplit

__all__ = ["didemo_video_path", "load_didemo_split", "read_didemo_paragraphs"]


def read_didemo_paragraphs(path: Path) -> dict[str, str]:
    """``{video name: paragraph}`` in first-appearance order; every row needs a video and a description."""
    path = Path(path)
    rows = read_annotation_json(path)
    if not isinstance(rows, list) or not rows:
        raise AnnotationError(f"{path}: expected a non-empty list of moment annotations")
    parts: dict[str, list[str]] = {}
    for index, row in enumerate(rows):
        where = f"{path} item {index}"
        if not isinstance(row, dict):
            raise AnnotationError(f"{where}: expected an object with 'video' and 'description'")
        video, text = row.get("video"), row.get("description")
        safe_video_id(video, where)
        if not isinstance(text, str) or not text.strip():
            raise AnnotationError(f"{where}: empty or missing 'description'")
        parts.setdefault(video, []).append(text)
    return {video: " ".join(texts) for video, texts in parts.items()}


def didemo_video_path(video_dir: Path, name: str) -> Path:
    """The file ``<video_dir>/<name>`` if it exists, else the compressed ``<stem>.mp4`` (or another known
    extension), else the expected original path."""
    video_dir = Path(video_dir)
    exact = video_dir / name
    if exact.is_file():
        if not exact.resolve().is_relative_to(video_dir.resolve()):
            raise ValueError(f"video {exact} resolves to {exact.resolve()}, outside {video_dir.resolve()}")
        return exact
    stem = PurePath(name).stem if PurePath(name).suffix else name
    return find_video(video_dir, stem) or exact


def load_didemo_split(data_json: Path, video_dir: Path, name: str, list_txt: Path | None = None) -> RetrievalSplit:
    """One split: every video of ``data_json`` (only those of ``list_txt`` when given), one paragraph each."""
    paragraphs = read_didemo_paragraphs(data_json)
    ids = list(paragraphs)
    if list_txt is not None:
        listed = set(read_video_list(list_txt))
        ids = [vid for vid in ids if vid in listed]
        if not ids:
            raise AnnotationError(f"{list_txt}: none of its videos is annotated in {data_json}")
    queries = [Caption(paragraphs[vid], vid) for vid in ids]
    return RetrievalSplit(name, ids, queries, {vid: didemo_video_path(video_dir, vid) for vid in ids})

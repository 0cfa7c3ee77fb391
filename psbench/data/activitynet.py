"""ActivityNet Captions in the field's paragraph-to-video setting (CLIP4Clip's loader, checked at its source).

Files (as released with CLIP4Clip / Prompt Switch):

- ``train.json`` / ``val_1.json``: ``{"v_<youtube id>": {"duration": s, "timestamps": [[s, e], ...],
  "sentences": [text, ...]}}``;
- ``train_ids.json`` / ``val_ids.json``: a JSON list of the split's ids (``"v_<youtube id>"``).

The test split is ``val_1.json`` with ``val_ids.json`` (CLIP4Clip has no test loader and evaluates on
val_1). A split's gallery is the id list in file order, restricted to ids that have captions (CLIP4Clip
skips the others: val 4,925 ids, 4,917 caption entries, 4,916 in both; train 10,022 / 10,009 / 10,007).
Each video has ONE query, the paragraph ``" ".join(sentences)`` in file order (no stripping: the
tokenizer collapses whitespace). The whole video is used: CLIP4Clip sets start 0 and end ceil(duration)
and never reads the timestamps. The three ids of the release's ``bad_vids.txt`` are exactly the caption
entries missing from the id lists, so they are already left out.

Video files: ``v_<id>.<ext>`` (TS2-Net, Prompt Switch) or ``<id>.<ext>`` (CLIP4Clip strips the ``v_``);
both are found, and a video present under both names is an error.
"""

from __future__ import annotations

from pathlib import Path

from psbench.data.msrvtt import read_annotation_json
from psbench.data.paths import AnnotationError, find_video, safe_video_id
from psbench.data.split import Caption, RetrievalSplit

__all__ = ["activitynet_video_path", "load_activitynet_split", "read_activitynet_captions", "read_id_list"]

ID_PREFIX = "v_"


def read_id_list(path: Path) -> list[str]:
    """A JSON list of unique, safe video ids."""
    path = Path(path)
    data = read_annotation_json(path)
    if not isinstance(data, list) or not data:
        raise AnnotationError(f"{path}: expected a non-empty JSON list of video ids")
    seen: dict[str, int] = {}
    for index, vid in enumerate(data):
        where = f"{path} item {index}"
        safe_video_id(vid, where)
        if vid in seen:
            raise AnnotationError(f"{where}: video id {vid!r} already listed at item {seen[vid]}")
        seen[vid] = index
    return list(data)


def read_activitynet_captions(path: Path) -> dict[str, list[str]]:
    """``{video_id: [sentence, ...]}`` from a captions file; each entry needs a non-empty sentence list."""
    path = Path(path)
    data = read_annotation_json(path)
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: expected an object {{video_id: {{'sentences': [...], ...}}}}")
    out: dict[str, list[str]] = {}
    for vid, entry in data.items():
        where = f"{path} entry {vid!r}"
        sentences = entry.get("sentences") if isinstance(entry, dict) else None
        if not isinstance(sentences, list) or not sentences:
            raise AnnotationError(f"{where}: expected a non-empty 'sentences' list")
        if not all(isinstance(s, str) and s.strip() for s in sentences):
            raise AnnotationError(f"{where}: empty or non-string sentence")
        out[vid] = sentences
    return out


def activitynet_video_path(video_dir: Path, video_id: str) -> Path:
    """The file of ``video_id`` (``v_<id>``) under either naming, or the expected ``<video_dir>/<video_id>.mp4``."""
    named = find_video(video_dir, video_id)
    bare = find_video(video_dir, video_id.removeprefix(ID_PREFIX)) if video_id.startswith(ID_PREFIX) else None
    if named is not None and bare is not None:
        raise AnnotationError(f"video {video_id!r} exists twice, as {named} and as {bare}: keep one")
    return named or bare or Path(video_dir) / f"{video_id}.mp4"


def load_activitynet_split(captions_json: Path, ids_json: Path, video_dir: Path, name: str) -> RetrievalSplit:
    """One split: the listed videos that have captions, each with its one paragraph query."""
    captions = read_activitynet_captions(captions_json)
    ids = [vid for vid in read_id_list(ids_json) if vid in captions]
    if not ids:
        raise AnnotationError(f"{ids_json}: none of its ids has captions in {captions_json}")
    queries = [Caption(" ".join(captions[vid]), vid) for vid in ids]
    return RetrievalSplit(name, ids, queries, {vid: activitynet_video_path(video_dir, vid) for vid in ids})

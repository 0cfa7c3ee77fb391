"""LSMDC annotation format (spec §8.3): tab-separated, six columns, no header.

Columns: clip id, start (aligned), end (aligned), start (extracted), end (extracted), sentence.
Files: ``LSMDC16_annos_training.csv`` (~101k lines; clip ids may repeat) and
``LSMDC16_challenge_1000_publictect.csv`` (the public test: 1,000 clips, one sentence each).

Training captions follow one of the two official conventions:
- every line is a (clip, sentence) pair (CLIP4Clip / TS2-Net; the default);
- ``dedupe=True``: one caption per clip, the LAST line of a clip wins (X-Pool / Prompt Switch
  keep a clip -> sentence dictionary).

The gallery is the distinct clip ids in order of first appearance. Lines are split on tabs only
(no csv quoting: sentences contain quotes). Video files are looked up as ``<video_dir>/<clip>.<ext>``,
then in the official per-movie folder ``<video_dir>/<movie>/<clip>.<ext>`` where ``<movie>`` is the
clip id without its final ``_<start>-<end>`` part (e.g. ``1012_Unbreakable``).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from psbench.data.paths import AnnotationError, find_video, safe_video_id
from psbench.data.split import Caption, RetrievalSplit

__all__ = ["LSMDC_COLUMNS", "LsmdcLine", "load_lsmdc_split", "lsmdc_video_path", "read_lsmdc_lines"]

LSMDC_COLUMNS = ("clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted", "sentence")


class LsmdcLine(NamedTuple):
    """One annotation line: its 1-based number, clip id and sentence."""

    line: int
    clip_id: str
    sentence: str


def read_lsmdc_lines(path: Path) -> list[LsmdcLine]:
    """Every non-blank line of an LSMDC file; a line without exactly six tab-separated fields, an
    unsafe clip id or an empty sentence raises AnnotationError naming the file and line (1-based)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not valid UTF-8 text ({err})") from err
    out: list[LsmdcLine] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        where = f"{path} line {number}"
        fields = line.split("\t")
        if len(fields) != len(LSMDC_COLUMNS):
            raise AnnotationError(
                f"{where}: {len(fields)} tab-separated field(s), expected {len(LSMDC_COLUMNS)} "
                f"({', '.join(LSMDC_COLUMNS)})"
            )
        clip_id = safe_video_id(fields[0].strip(), where)
        sentence = fields[5].strip()
        if not sentence:
            raise AnnotationError(f"{where}: empty sentence")
        out.append(LsmdcLine(number, clip_id, sentence))
    if not out:
        raise AnnotationError(f"{path}: no annotation lines")
    return out


def lsmdc_video_path(video_dir: Path, clip_id: str) -> Path:
    """The existing file of a clip (flat, then per-movie folder), else the expected flat ``.avi`` path."""
    video_dir = Path(video_dir)
    found = find_video(video_dir, clip_id)
    movie = clip_id.rsplit("_", 1)[0]
    if found is None and movie and movie != clip_id:
        found = find_video(video_dir / movie, clip_id)
        if found is not None and not found.resolve().is_relative_to(video_dir.resolve()):
            raise ValueError(f"video {found} resolves outside {video_dir}")
    return found or video_dir / f"{clip_id}.avi"


def load_lsmdc_split(path: Path, video_dir: Path, name: str, dedupe: bool = False) -> RetrievalSplit:
    """One split from an LSMDC file: every line a caption, or (``dedupe``) the last line per clip."""
    lines = read_lsmdc_lines(path)
    ids = list(dict.fromkeys(entry.clip_id for entry in lines))
    if dedupe:
        last = {entry.clip_id: entry.sentence for entry in lines}  # later lines overwrite earlier ones
        captions = [Caption(last[vid], vid) for vid in ids]
    else:
        captions = [Caption(entry.sentence, entry.clip_id) for entry in lines]
    return RetrievalSplit(name, ids, captions, {v: lsmdc_video_path(video_dir, v) for v in ids})

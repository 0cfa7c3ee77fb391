"""The dataset-independent view of one split: a video gallery and its captions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psbench.protocol import DataConfig


@dataclass(frozen=True)
class Caption:
    """One caption (a text query) and the id of the video it describes."""

    text: str
    video_id: str


@dataclass(frozen=True)
class RelationGroup:
    """Four videos of the relation probe: two whose halves share a colour, two whose halves do not.

    The frames of ``same`` slot by slot are the frames of ``different`` (the same multiset), so any
    additive pooling of per-frame features sums to the same vector over either pair.
    """

    name: str
    same: tuple[str, str]
    different: tuple[str, str]

    @property
    def members(self) -> tuple[str, str, str, str]:
        return (*self.same, *self.different)


@dataclass
class RetrievalSplit:
    """One split of a dataset as every loader returns it.

    video_ids: the gallery, unique ids in a fixed order (each video is decoded once).
    captions: the queries in a fixed order; several captions may share a video.
    video_paths: id -> file.
    twin_of: synthetic only: id -> id of its time-reversed twin (both in ``video_ids``).
    relation_groups: relation probe only: its groups of four videos (all in ``video_ids``).
    """

    name: str
    video_ids: list[str]
    captions: list[Caption]
    video_paths: dict[str, Path]
    twin_of: dict[str, str] = field(default_factory=dict)
    relation_groups: list[RelationGroup] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.video_ids)) != len(self.video_ids):
            raise ValueError(f"split {self.name!r}: duplicated video ids in the gallery")
        known = set(self.video_ids)
        missing = [c.video_id for c in self.captions if c.video_id not in known]
        if missing:
            raise ValueError(f"split {self.name!r}: captions refer to unknown videos, e.g. {missing[0]!r}")

    def caption_video_index(self) -> list[int]:
        """For every caption, the gallery index of its video."""
        index = {vid: i for i, vid in enumerate(self.video_ids)}
        return [index[c.video_id] for c in self.captions]

    def subset(self, video_ids: list[str]) -> RetrievalSplit:
        """The same split restricted to ``video_ids`` (their captions kept, order preserved)."""
        keep = set(video_ids)
        return RetrievalSplit(
            self.name,
            [v for v in self.video_ids if v in keep],
            [c for c in self.captions if c.video_id in keep],
            {v: p for v, p in self.video_paths.items() if v in keep},
            {v: t for v, t in self.twin_of.items() if v in keep and t in keep},
            [g for g in self.relation_groups if keep.issuperset(g.members)],
        )


#: what the dataset registry holds: (the protocol's data config, data root, split name) -> the split
SplitLoader = Callable[[DataConfig, Path, str], RetrievalSplit]

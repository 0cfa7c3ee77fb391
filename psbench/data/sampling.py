"""Named frame samplers: which frame numbers of a video a method sees (spec §2.3, §4.6, §5.5, §6.7).

Every sampler has the signature ``fn(num_video_frames, n, rng, segments=None) -> list[int]`` and
returns exactly ``n`` frame numbers in ``[0, num_video_frames)``, in the order the method consumes
them. Deterministic samplers ignore ``rng``; random ones require it. A protocol picks a sampler by
name from :data:`SAMPLERS`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from psbench.registry import Registry

DEFAULT_PROMPT_SEGMENTS = 6


class FrameSampler(Protocol):
    def __call__(
        self, num_video_frames: int, n: int, rng: np.random.Generator | None, segments: int | None = None
    ) -> list[int]: ...


SAMPLERS: Registry[FrameSampler] = Registry("frame sampler")


def _check(name: str, num_video_frames: int, n: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"sampler {name!r}: the video has {num_video_frames} frames; need at least 1")
    if n < 1:
        raise ValueError(f"sampler {name!r}: asked for {n} frames; need at least 1")


def _need_rng(name: str, rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError(f"sampler {name!r} is random and needs an rng (np.random.Generator); got None")
    return rng


def _boundaries(num_video_frames: int, parts: int) -> list[int]:
    """``linspace(0, L, parts + 1)`` cast to int: segment k is [s_k, s_{k+1})."""
    return np.linspace(0, num_video_frames, parts + 1).astype(int).tolist()


def _pad_with_last(indices: list[int], n: int) -> list[int]:
    """X-Pool / Prompt Switch: a video shorter than ``n`` frames repeats its last sampled frame."""
    return indices + [indices[-1]] * (n - len(indices))


@SAMPLERS.register("uniform")
def uniform(
    num_video_frames: int, n: int, rng: np.random.Generator | None = None, segments: int | None = None
) -> list[int]:
    """CLIP4Clip / CLIP-ViP test sampling: ``linspace(0, L-1, n)`` cast to int.

    When L < n the result repeats frames; we always return ``n`` frames (mask all valid) rather
    than CLIP4Clip's zero padding with a mask. CLIP4Clip's 1-fps pre-sampling (spec §2.3) is not
    reproduced: ``L`` is the video's own frame count.
    """
    _check("uniform", num_video_frames, n)
    return np.linspace(0, num_video_frames - 1, n).astype(int).tolist()


@SAMPLERS.register("segment_middle")
def segment_middle(
    num_video_frames: int, n: int, rng: np.random.Generator | None = None, segments: int | None = None
) -> list[int]:
    """X-Pool "uniform" (its default, also in training): the middle frame of n equal segments.

    Boundaries ``linspace(0, L, min(n, L) + 1)`` cast to int; segment [a, b] (b = s_{k+1} - 1)
    gives ``(a + b) // 2``. A video shorter than ``n`` frames repeats its last frame.
    """
    _check("segment_middle", num_video_frames, n)
    parts = min(n, num_video_frames)
    s = _boundaries(num_video_frames, parts)
    picks = [(s[k] + s[k + 1] - 1) // 2 for k in range(parts)]
    return _pad_with_last(picks, n)


@SAMPLERS.register("random_per_segment")
def random_per_segment(
    num_video_frames: int, n: int, rng: np.random.Generator | None, segments: int | None = None
) -> list[int]:
    """X-Pool / Prompt Switch "rand" (PS training): one random frame per equal segment.

    Boundaries ``linspace(0, L, min(n, L) + 1)`` cast to int; the frame is drawn uniformly from
    {s_k, ..., s_{k+1} - 2}: as in the official code, a segment's last frame is never chosen.
    Deviation: the official code crashes on a one-frame segment (empty range); we take s_k there.
    A video shorter than ``n`` frames repeats its last frame.
    """
    _check("random_per_segment", num_video_frames, n)
    rng = _need_rng("random_per_segment", rng)
    parts = min(n, num_video_frames)
    s = _boundaries(num_video_frames, parts)
    picks = []
    for k in range(parts):
        high = s[k + 1] - 1  # exclusive: s_{k+1} - 2 is the last candidate
        picks.append(int(rng.integers(s[k], high)) if high > s[k] else s[k])
    return _pad_with_last(picks, n)


@SAMPLERS.register("chunked_interleave")
def chunked_interleave(
    num_video_frames: int, n: int, rng: np.random.Generator | None = None, segments: int | None = None
) -> list[int]:
    """Prompt Switch test sampling (spec §6.7): ``n // segments`` chunks, each spanning the video.

    As ``datasets/video_capture.py`` (``load_frames_from_video``, ``uniform``): ``parts = min(segments, L)``
    segments with boundaries ``linspace(0, L, parts + 1)`` cast to int (``segments`` = number of prompts,
    default 6); chunk i takes ``s_k + ((s_{k+1} - 1 - s_k) // (chunks + 1)) * (i + 1)`` in every segment
    k; the output is chunk 0's frames, then chunk 1's, ... (not in temporal order). With 12 frames and 6
    segments: 2 chunks at about 1/3 and 2/3 of each segment. A video with fewer than ``segments`` frames
    yields ``parts`` frames per chunk, and the list is padded to ``n`` with its last frame, as the
    official code pads (so the chunks of such a video no longer line up with the prompt slots).
    """
    segments = DEFAULT_PROMPT_SEGMENTS if segments is None else segments
    _check("chunked_interleave", num_video_frames, n)
    if segments < 1 or n % segments:
        raise ValueError(f"sampler 'chunked_interleave': num_frames={n} is not a multiple of segments={segments}")
    chunks = n // segments
    parts = min(segments, num_video_frames)
    s = _boundaries(num_video_frames, parts)
    steps = [(s[k + 1] - 1 - s[k]) // (chunks + 1) for k in range(parts)]
    picks = [s[k] + steps[k] * (i + 1) for i in range(chunks) for k in range(parts)]
    return _pad_with_last(picks, n)


@SAMPLERS.register("jittered_linspace")
def jittered_linspace(
    num_video_frames: int, n: int, rng: np.random.Generator | None, segments: int | None = None
) -> list[int]:
    """CLIP-ViP training sampling (``sample_jitter``): ``linspace(start, end, n)`` cast to int.

    ``interval = L // (n - 1)``; start is drawn from [0, interval] and end from
    [L - 1 - interval, L - 1], both inclusive. Deviation: both are clipped to [0, L - 1] (the
    official draw can leave the video when n = 2). As in the official code, start may exceed end
    on very short videos (the frames then run backwards). Needs n >= 2.
    """
    _check("jittered_linspace", num_video_frames, n)
    rng = _need_rng("jittered_linspace", rng)
    if n < 2:
        raise ValueError(f"sampler 'jittered_linspace' needs at least 2 frames; asked for {n}")
    last = num_video_frames - 1
    interval = num_video_frames // (n - 1)
    start = min(int(rng.integers(0, interval + 1)), last)
    end = max(int(rng.integers(last - interval, last + 1)), 0)
    return np.linspace(start, end, n).astype(int).tolist()


def sample_frames(
    name: str, num_video_frames: int, n: int, rng: np.random.Generator | None, segments: int | None = None
) -> list[int]:
    """Look up sampler ``name`` and apply it; checks the result's length and range."""
    indices = SAMPLERS.get(name)(num_video_frames, n, rng, segments)
    if len(indices) != n or min(indices) < 0 or max(indices) >= num_video_frames:
        raise RuntimeError(f"sampler {name!r} returned {indices} for L={num_video_frames}, n={n}")
    return indices

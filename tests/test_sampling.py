"""Frame samplers against hand-computed examples and properties."""

from __future__ import annotations

import numpy as np
import pytest

from psbench.data.sampling import SAMPLERS, sample_frames

RANDOM = {"random_per_segment", "jittered_linspace"}


class FixedDraws:
    """A stand-in rng whose ``integers`` returns preset values (checks the bounds asked for)."""

    def __init__(self, draws: list[tuple[int, int, int]]) -> None:
        self.draws = list(draws)  # (expected low, expected high exclusive, value)

    def integers(self, low: int, high: int) -> int:
        want_low, want_high, value = self.draws.pop(0)
        assert (low, high) == (want_low, want_high)
        return value


def test_registry_names() -> None:
    assert set(SAMPLERS.names()) == {
        "uniform",
        "segment_middle",
        "random_per_segment",
        "chunked_interleave",
        "jittered_linspace",
    }


@pytest.mark.parametrize(
    ("length", "n", "expected"),
    [
        (10, 4, [0, 3, 6, 9]),
        (100, 12, [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99]),
        (3, 5, [0, 0, 1, 1, 2]),  # short video: repeats, never pads
        (1, 3, [0, 0, 0]),
    ],
)
def test_uniform(length: int, n: int, expected: list[int]) -> None:
    assert SAMPLERS.get("uniform")(length, n, None) == expected


@pytest.mark.parametrize(
    ("length", "n", "expected"),
    [
        (60, 6, [4, 14, 24, 34, 44, 54]),
        (10, 4, [0, 3, 5, 8]),  # boundaries [0, 2, 5, 7, 10]
        (3, 5, [0, 1, 2, 2, 2]),  # short video: last frame repeated
    ],
)
def test_segment_middle(length: int, n: int, expected: list[int]) -> None:
    assert SAMPLERS.get("segment_middle")(length, n, None) == expected


def test_random_per_segment_bounds_exclude_last_frame_of_segment() -> None:
    # L=7, n=3: boundaries [0, 2, 4, 7]; candidates {0}, {2}, {4, 5}
    rng = FixedDraws([(0, 1, 0), (2, 3, 2), (4, 6, 5)])
    assert SAMPLERS.get("random_per_segment")(7, 3, rng) == [0, 2, 5]


def test_random_per_segment_covers_all_candidates_but_never_the_segment_end() -> None:
    seen: list[set[int]] = [set() for _ in range(6)]
    for seed in range(300):
        picks = SAMPLERS.get("random_per_segment")(60, 6, np.random.default_rng(seed))
        for k, p in enumerate(picks):
            seen[k].add(p)
    assert seen == [set(range(10 * k, 10 * k + 9)) for k in range(6)]


def test_random_per_segment_one_frame_segments_take_segment_start() -> None:
    rng = np.random.default_rng(0)
    assert SAMPLERS.get("random_per_segment")(6, 6, rng) == [0, 1, 2, 3, 4, 5]
    assert SAMPLERS.get("random_per_segment")(3, 5, rng) == [0, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("length", "n", "segments", "expected"),
    [
        # boundaries 0,10,..,60; 2 chunks -> step (9 // 3) = 3 -> frames at +3 and +6
        (60, 12, 6, [3, 13, 23, 33, 43, 53, 6, 16, 26, 36, 46, 56]),
        # boundaries [0, 16, 33, 50, 66, 83, 100]; steps 15//3=5, 16//3=5 everywhere
        (100, 12, None, [5, 21, 38, 55, 71, 88, 10, 26, 43, 60, 76, 93]),
        # one chunk: step 9 // 2 = 4
        (60, 6, 6, [4, 14, 24, 34, 44, 54]),
        # three chunks: step 9 // 4 = 2
        (60, 18, 6, [2, 12, 22, 32, 42, 52, 4, 14, 24, 34, 44, 54, 6, 16, 26, 36, 46, 56]),
        # 4 prompts, 2 chunks: boundaries 0,10,20,30,40 -> step 3
        (40, 8, 4, [3, 13, 23, 33, 6, 16, 26, 36]),
        # L < segments (official video_capture.py): min(6, 3) = 3 segments per chunk, padded with the last frame
        (3, 12, 6, [0, 1, 2, 0, 1, 2, 2, 2, 2, 2, 2, 2]),
        (4, 6, 6, [0, 1, 2, 3, 3, 3]),
    ],
)
def test_chunked_interleave(length: int, n: int, segments: int | None, expected: list[int]) -> None:
    assert SAMPLERS.get("chunked_interleave")(length, n, None, segments) == expected


def test_chunked_interleave_each_chunk_spans_the_video_in_order() -> None:
    picks = SAMPLERS.get("chunked_interleave")(301, 12, None, 6)
    for chunk in (picks[:6], picks[6:]):
        assert chunk == sorted(chunk)
        assert chunk[0] < 301 / 6 and chunk[-1] >= 301 * 5 / 6
    assert all(a < b for a, b in zip(picks[:6], picks[6:], strict=True))


def test_chunked_interleave_rejects_non_multiple() -> None:
    with pytest.raises(ValueError, match=r"num_frames=10.*segments=6"):
        SAMPLERS.get("chunked_interleave")(60, 10, None, 6)


def test_jittered_linspace_hand_example() -> None:
    # L=100, n=12: interval = 100 // 11 = 9; start in [0, 9], end in [90, 99]
    rng = FixedDraws([(0, 10, 3), (90, 100, 95)])
    assert SAMPLERS.get("jittered_linspace")(100, 12, rng) == [3, 11, 19, 28, 36, 44, 53, 61, 69, 78, 86, 95]


def test_jittered_linspace_reaches_both_ends_of_both_ranges() -> None:
    starts, ends = set(), set()
    for seed in range(400):
        picks = SAMPLERS.get("jittered_linspace")(100, 12, np.random.default_rng(seed))
        starts.add(picks[0])
        ends.add(picks[-1])
    assert starts == set(range(10))
    assert ends == set(range(90, 100))


def test_jittered_linspace_needs_two_frames() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        SAMPLERS.get("jittered_linspace")(100, 1, np.random.default_rng(0))


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_samplers_require_rng(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}.*rng"):
        SAMPLERS.get(name)(50, 6, None)


@pytest.mark.parametrize("name", sorted(SAMPLERS.names()))
def test_properties(name: str) -> None:
    for length in (1, 2, 5, 6, 7, 11, 12, 13, 59, 60, 61, 240, 1001):
        for n in (6, 12):
            first = sample_frames(name, length, n, np.random.default_rng(length * 7 + n))
            again = sample_frames(name, length, n, np.random.default_rng(length * 7 + n))
            assert len(first) == n
            assert all(0 <= i < length for i in first), (name, length, n, first)
            assert first == again  # same seed, same frames
    with pytest.raises(ValueError, match="0 frames"):
        SAMPLERS.get(name)(0, 6, np.random.default_rng(0))


def test_random_samplers_vary_with_seed() -> None:
    for name in RANDOM:
        draws = {tuple(sample_frames(name, 300, 12, np.random.default_rng(s))) for s in range(10)}
        assert len(draws) > 5, name

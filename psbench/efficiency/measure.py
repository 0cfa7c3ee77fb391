"""Cost of the similarity stage: FLOPs, latency and memory per method, and their scaling with gallery size.

What is timed is what ranks: the online stage is ``psbench.retrieval.engine.topk`` (``method.similarity``
block by block + exact top-k), the text stage is ``method.encode_text`` and the offline stage is
``method.encode_video`` on one F-frame video.

Embeddings are SYNTHETIC: one real ``encode_video`` / ``encode_text`` call fixes the keys, per-item
shapes and dtypes of the Encoded dicts; N gallery items and Q queries are then filled with random
values (non-float tensors such as frame masks copy the real item). Latency and memory do not depend
on the values. The JSON says so in ``synthetic_embeddings``.

Budget: each (method, gallery size) point may spend at most ``budget_s`` seconds (warm-up + repeats).
A point that cannot run even one query within it, or whose gallery exceeds ``max_gallery_bytes``, is
EXTRAPOLATED from a least-squares fit ``latency = a N`` over the measured points and is flagged as
such everywhere. A point measured on fewer than Q queries reports the measured per-query latency and
a whole-query-set latency scaled linearly in Q (``query_set_extrapolated``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from psbench.backbone import flops as towers
from psbench.backbone.clip import create_clip, tokenizer_for
from psbench.catalog import create_method, efficiency_methods, frame_count_error, method_entry
from psbench.efficiency import flops
from psbench.efficiency.config import DTYPES, EfficiencyConfig
from psbench.files import atomic
from psbench.method import Encoded, RetrievalMethod
from psbench.progress import Progress, SilentProgress
from psbench.retrieval import engine
from psbench.runs.dirs import environment

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SYNTHETIC_NOTE = (
    "gallery and query encodings are random values with the exact keys, per-item shapes and dtypes that "
    "encode_video / encode_text return (non-float tensors copy one real item); latency and memory do not "
    "depend on the values, retrieval results are meaningless"
)
FLOP_NOTE = "FLOPs = 2 x multiply-adds; fvcore counts one multiply-add as one flop and is converted x2 here"


def gallery_sizes(largest: int, sweep: bool, smallest: int = 1000, per_decade: int = 2) -> list[int]:
    """``[largest]``, or log-spaced sizes from ``smallest`` to ``largest`` (both included) with --sweep."""
    if not sweep or largest <= smallest:
        return [largest]
    steps = max(1, math.ceil(per_decade * math.log10(largest / smallest)))
    sizes = {round(smallest * (largest / smallest) ** (i / steps)) for i in range(steps + 1)}
    return sorted(sizes)


# -- device, clock, memory -----------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available on this machine")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call: CUDA events around it on GPU (after synchronising), perf_counter on CPU."""
    synchronize(device)
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        synchronize(device)
        return start.elapsed_time(stop) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Stats:
    """Repeated timings in seconds."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    repeats: int
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        arr = np.asarray(values, dtype=np.float64)
        q1, med, q3 = np.percentile(arr, [25, 50, 75])
        values = [float(v) for v in arr]
        return cls(float(med), float(arr.min()), float(arr.max()), float(q1), float(q3), len(values), values)

    def scaled(self, factor: float) -> Stats:
        return Stats.of([v * factor for v in self.values])


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> Stats:
    for _ in range(warmup):
        fn()
    return Stats.of([time_once(fn, device) for _ in range(repeats)])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``); None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim(0)``); False where unavailable.

    Without it, memory that was freed earlier but is still resident can be reused by the next
    allocation without raising RSS, and an RSS-based peak would under-count.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class PeakMemory:
    """Peak memory above the level at entry: CUDA ``max_memory_allocated``, else sampled process RSS.

    On CPU the C heap's free pages are first returned to the OS (``release_free_heap``) so that new
    allocations show up in RSS; then a background thread samples ``/proc/self/statm`` every
    ``interval`` seconds (falling back to ``ru_maxrss``, which cannot be reset, where /proc is missing).
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        elif Path("/proc/self/statm").is_file():
            trimmed = release_free_heap()
            self._base = self._max = _rss_bytes()
            self.method = "peak RSS delta (/proc/self/statm sampler" + (", after malloc_trim)" if trimmed else ")")
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss delta (process-lifetime peak)"
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _rss_bytes())
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = max(0, int(peak - self._base))


def available_host_memory() -> int:
    """Bytes the OS can hand out now: ``MemAvailable`` (free + reclaimable page cache), else free pages."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_gallery_cap(device: torch.device) -> int:
    """min(8 GiB, half the available memory) of the device that holds the gallery."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = available_host_memory()
    return int(min(8 * 2**30, free // 2))


# -- synthetic encodings -------------------------------------------------------------------------------
def describe_encoded(enc: Encoded) -> dict[str, dict[str, Any]]:
    """Keys -> per-item shape and dtype."""
    return {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype).replace("torch.", "")} for k, v in enc.items()}


class SyntheticEncoded:
    """N items shaped like ``template`` (an Encoded of >= 1 real item), filled lazily in chunks.

    Storage for ``capacity`` items is allocated once; ``take(n)`` fills rows up to n on first use
    and returns views. Float tensors get N(0, 1) values in ``dtype``; other tensors repeat item 0.
    ``derive`` (a method's ``derive_cached``) then recomputes the entries that are functions of others
    (X-Pool's folded form: its Gram matrices from the values), so the random gallery stays consistent.
    """

    def __init__(
        self,
        template: Encoded,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
        derive: Callable[[Encoded], Encoded] | None = None,
    ) -> None:
        self.derive = derive
        self.template = {k: v[:1].to(device) for k, v in template.items()}
        self.dtype = dtype
        self.storage = {
            k: torch.empty((capacity, *v.shape[1:]), dtype=dtype if v.is_floating_point() else v.dtype, device=device)
            for k, v in self.template.items()
        }
        self.filled = 0
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def capacity(self) -> int:
        return next(iter(self.storage.values())).shape[0]

    def take(self, n: int, chunk: int = 8192) -> Encoded:
        if n > self.capacity:
            raise ValueError(f"asked for {n} synthetic items, capacity {self.capacity}")
        for start in range(self.filled, n, chunk):
            stop = min(start + chunk, n)
            for key, out in self.storage.items():
                if out.is_floating_point():
                    values = torch.randn(out[start:stop].shape, generator=self.generator, device=out.device)
                    out[start:stop] = values.to(self.dtype)
                else:
                    out[start:stop] = self.template[key].expand_as(out[start:stop])
            if self.derive is not None:
                chunk_items = {k: v[start:stop].float() for k, v in self.storage.items()}  # float32 algebra
                for key, value in self.derive(chunk_items).items():
                    self.storage[key][start:stop] = value.to(self.storage[key].dtype)
        self.filled = max(self.filled, n)
        return {k: v[:n] for k, v in self.storage.items()}


def bytes_per_item(template: Encoded, dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    per = 0
    for value in template.values():
        per += value[0].numel() * (size if value.is_floating_point() else value.element_size())
    return per


# -- the stages -----------------------------------------------------------------------------------------
def build_method(
    name: str, arch: str, device: torch.device, dtype: torch.dtype, options: dict[str, Any] | None = None
) -> RetrievalMethod:
    """A randomly initialised method (weights do not change cost) with its ``options``, cast to ``dtype``."""
    method = create_method(name, create_clip(arch), options)
    return method.to(device=device, dtype=dtype).eval()


def probe_video(
    method: RetrievalMethod, frames: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """One random F-frame video at the backbone's resolution: frames (1, F, 3, S, S), mask (1, F)."""
    shape = towers.ViTShape.from_visual(method.clip.visual)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, frames, shape.in_channels, shape.image_size, shape.image_size, generator=g)
    return pixels.to(device=device, dtype=dtype), torch.ones(1, frames, dtype=torch.bool, device=device)


def probe_texts(method: RetrievalMethod, count: int) -> Tensor:
    """``count`` tokenised English queries (the text tower always runs over its full context)."""
    words = ["a", "man", "is", "cooking", "pasta", "in", "the", "kitchen", "while", "talking", "to", "camera"]
    texts = [" ".join(words[: 4 + i % len(words)]) + f" number {i}" for i in range(count)]
    return tokenizer_for(method.clip, max_words=32)(texts)  # (count, L)


def offline_stage(
    method: RetrievalMethod, cfg: EfficiencyConfig, device: torch.device, dtype: torch.dtype
) -> tuple[dict[str, Any], Encoded]:
    """Time ``encode_video`` on one F-frame video; count its FLOPs; return the real Encoded too."""
    frames, mask = probe_video(method, cfg.frames, device, dtype)
    with torch.inference_mode():
        video = method.encode_video(frames, mask)
        stats = measure(lambda: method.encode_video(frames, mask), device, cfg.warmup, cfg.offline_repeats)
    counted, unsupported = _fvcore_or_error(lambda: flops.count_encode_video_flops(method, frames, mask))
    return {
        "latency_s": asdict(stats),
        "flops_fvcore": counted,
        "flops_closed_form": flops.closed_form_video_flops(method, cfg.frames),
        "fvcore_unsupported_ops": unsupported,
        "bytes_per_video": bytes_per_item(video, dtype),
        "encoded": describe_encoded(video),
    }, video


def text_stage(method: RetrievalMethod, cfg: EfficiencyConfig, device: torch.device) -> tuple[dict[str, Any], Encoded]:
    """Time the real text tower once on min(Q, text_queries) tokenised queries; count its FLOPs."""
    count = min(cfg.queries, cfg.text_queries)
    tokens = probe_texts(method, count).to(device)  # (count, L)
    with torch.inference_mode():
        method.encode_text(tokens[:2])  # warm-up
        text: Encoded = {}

        def run() -> None:
            text.update(method.encode_text(tokens))

        seconds = time_once(run, device)
    counted, unsupported = _fvcore_or_error(lambda: flops.count_encode_text_flops(method, tokens[:1]))
    per_query = seconds / count
    return {
        "queries_timed": count,
        "latency_per_query_s": per_query,
        "latency_query_set_s": per_query * cfg.queries,
        "query_set_extrapolated": count < cfg.queries,
        "flops_per_query_fvcore": counted,
        "flops_per_query_closed_form": flops.closed_form_text_flops(method),
        "fvcore_unsupported_ops": unsupported,
        "encoded": describe_encoded(text),
    }, text


def _fvcore_or_error(count: Callable[[], flops.FlopCount]) -> tuple[int | None, dict[str, Any]]:
    """Run an fvcore count; a trace failure is recorded (never fatal): (flops or None, unsupported/error)."""
    try:
        counted = count()
    except Exception as exc:  # noqa: BLE001 - tracing can fail on data-dependent code; recorded in the JSON
        log.warning("fvcore count failed: %s", exc)
        return None, {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return counted.flops, counted.unsupported


def online_flops(method: RetrievalMethod, cfg: EfficiencyConfig, text: Encoded, video: Encoded) -> dict[str, Any]:
    """FLOPs per (query, video) pair of ``similarity``: fvcore on a small probe, and the closed form."""
    q, n = encoded_len_min(text, cfg.fvcore_queries), encoded_len_min(video, cfg.fvcore_videos)
    text_probe, video_probe = engine.slice_encoded(text, 0, q), engine.slice_encoded(video, 0, n)
    counted, unsupported = _fvcore_or_error(lambda: flops.count_similarity_flops(method, text_probe, video_probe))
    dim = towers.ViTShape.from_visual(method.clip.visual).output_dim
    return {
        "flops_per_pair_fvcore": None if counted is None else counted / (q * n),
        "flops_per_pair_closed_form": flops.closed_form_pair_flops(method, cfg.frames, dim),
        "fvcore_probe": {"queries": q, "videos": n, "note": "count on this probe, divided by queries x videos"},
        "fvcore_unsupported_ops": unsupported,
    }


def encoded_len_min(enc: Encoded, cap: int) -> int:
    return min(engine.encoded_len(enc), cap)


# -- scaling -----------------------------------------------------------------------------------------------
@dataclass
class LinearFit:
    """latency = seconds_per_video x N (least squares through the origin) + log-log slope."""

    seconds_per_video: float
    loglog_slope: float | None
    points_used: int

    def predict(self, n: int) -> float:
        return self.seconds_per_video * n


def fit_linear(sizes: Sequence[int], seconds: Sequence[float]) -> LinearFit | None:
    """Fit cost proportional to N; None without points. The log-log slope needs two distinct sizes."""
    x, y = np.asarray(sizes, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    if x.size == 0:
        return None
    a = float((x * y).sum() / (x * x).sum())
    slope = None
    if np.unique(x).size >= 2 and (y > 0).all():
        slope = float(np.polyfit(np.log(x), np.log(y), 1)[0])
    return LinearFit(a, slope, int(x.size))


@dataclass
class Point:
    gallery: int
    status: str  # "measured" | "extrapolated"
    reason: str = ""
    queries_timed: int = 0
    latency_per_query_s: dict[str, Any] | None = None
    latency_query_set_s: float | None = None
    query_set_extrapolated: bool = False
    peak_memory_bytes: int | None = None
    gallery_bytes: int = 0
    gflops_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnlineRunner:
    """Times ``engine.topk`` for one method at several gallery sizes under a per-point budget."""

    method: RetrievalMethod
    cfg: EfficiencyConfig
    device: torch.device
    text: Encoded  # (Q, ...) synthetic queries
    gallery: SyntheticEncoded
    pair_flops: float | None
    seconds_per_pair: float | None = None

    def run_topk(self, q: int, n: int) -> None:
        engine.topk(
            self.method,
            engine.slice_encoded(self.text, 0, q),
            self.gallery.take(n),
            min(self.cfg.k, n),
            self.cfg.block_queries,
            self.cfg.block_videos,
            self.device,
            self.cfg.prefilter,
        )

    def pilot(self, n: int) -> None:
        """Warm up and estimate seconds per (query, video) pair: double the queries from 4 until one
        call takes >= 5% of the budget (or all Q are used), so per-call overheads do not dominate."""
        q = min(self.cfg.queries, 4)
        self.run_topk(q, n)  # warm-up
        while True:
            seconds = time_once(lambda q=q: self.run_topk(q, n), self.device)
            if seconds >= 0.05 * self.cfg.budget_s or q >= self.cfg.queries:
                break
            q = min(self.cfg.queries, 2 * q)
        self.seconds_per_pair = seconds / (q * n)

    def queries_within_budget(self, n: int) -> int:
        assert self.seconds_per_pair is not None
        runs = self.cfg.warmup + self.cfg.repeats
        per_query = self.seconds_per_pair * n
        return min(self.cfg.queries, int(self.cfg.budget_s / (runs * per_query)))

    def measure_point(self, n: int, cap_bytes: int) -> Point:
        nbytes = n * bytes_per_item(self.gallery.template, self.gallery.dtype)
        if n > self.gallery.capacity or nbytes > cap_bytes:
            return Point(n, "extrapolated", f"gallery of {nbytes / 2**30:.2f} GiB exceeds the memory cap", 0)
        if self.seconds_per_pair is None:
            self.pilot(n)
        q = self.queries_within_budget(n)
        if q < 1:
            return Point(n, "extrapolated", f"one query would exceed the {self.cfg.budget_s:g} s budget", 0)
        self.gallery.take(n)
        for _ in range(self.cfg.warmup):
            self.run_topk(q, n)
        with PeakMemory(self.device) as peak:
            runs = [time_once(lambda: self.run_topk(q, n), self.device) for _ in range(self.cfg.repeats)]
        self.seconds_per_pair = float(np.median(runs)) / (q * n)
        per_query = Stats.of([r / q for r in runs])
        gflops = None if self.pair_flops is None else self.pair_flops * n / per_query.median / 1e9
        return Point(
            n,
            "measured",
            "",
            q,
            asdict(per_query),
            per_query.median * self.cfg.queries,
            q < self.cfg.queries,
            peak.peak_bytes,
            nbytes,
            gflops,
            {"peak_memory_method": peak.method},
        )


def fill_extrapolated(points: list[Point], queries: int) -> LinearFit | None:
    """Fit on the measured points and give extrapolated points the fitted per-query latency."""
    measured = [p for p in points if p.status == "measured"]
    fit = fit_linear([p.gallery for p in measured], [p.latency_per_query_s["median"] for p in measured])
    for p in points:
        if p.status == "extrapolated" and fit is not None:
            p.latency_per_query_s = {"median": fit.predict(p.gallery), "extrapolated": True}
            p.latency_query_set_s = fit.predict(p.gallery) * queries
            p.query_set_extrapolated = True
    return fit


TOPK_PATHS = {
    False: "float32 scores for every pair + exact top-k",
    True: "bfloat16 prefilter with a proven error bound + float32 rescoring (exact top-k)",
}
DEVICE_TOPK_PATH = "device path: scores in the method's dtype + exact top-k from each block's k best groups"


#: progress steps of one method besides its gallery sizes: offline stage, text stage, online FLOPs
STAGES_PER_METHOD = 3


def measure_method(
    name: str,
    cfg: EfficiencyConfig,
    sizes: list[int],
    device: torch.device,
    advance: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """All stages of one method: offline, text, online FLOPs, online latency at each gallery size.

    ``advance(1, step=...)`` is called after each stage and each gallery size
    (``STAGES_PER_METHOD + len(sizes)`` calls).
    """
    advance = advance or (lambda n=1, **info: None)
    dtype = DTYPES[cfg.dtype]
    log.info("efficiency: %s", name)
    method = build_method(name, cfg.arch, device, dtype, cfg.options.get(name))
    offline, video = offline_stage(method, cfg, device, dtype)
    advance(1, step=f"{name} offline")
    text_info, text = text_stage(method, cfg, device)
    advance(1, step=f"{name} text")
    queries = SyntheticEncoded(text, cfg.queries, device, dtype, cfg.seed).take(cfg.queries)
    cap = cfg.max_gallery_bytes if cfg.max_gallery_bytes is not None else default_gallery_cap(device)
    capacity = min(max(sizes), max(1, cap // max(1, bytes_per_item(video, dtype))))
    derive = getattr(method, "derive_cached", None)
    gallery = SyntheticEncoded(video, capacity, device, dtype, cfg.seed + 1, derive)
    online = online_flops(method, cfg, queries, gallery.take(min(capacity, cfg.fvcore_videos)))
    advance(1, step=f"{name} FLOPs")
    runner = OnlineRunner(method, cfg, device, queries, gallery, online["flops_per_pair_closed_form"])
    probe = gallery.take(min(capacity, cfg.block_videos))
    prefiltered = engine.prefilter_operands(method, queries, probe, cfg.k, cfg.block_videos, device, cfg.prefilter)
    on_device = engine.uses_device_path(device, None)
    topk_path = DEVICE_TOPK_PATH if on_device else TOPK_PATHS[prefiltered is not None]
    points: list[Point] = []
    for n in sorted(sizes):
        if points and points[-1].status == "extrapolated":  # cost grows with N: larger points too
            points.append(Point(n, "extrapolated", points[-1].reason))
            advance(1, step=f"{name} N={n}")
            continue
        points.append(runner.measure_point(n, cap))
        log.info("  N=%d %s", n, points[-1].status)
        advance(1, step=f"{name} N={n}")
    fit = fill_extrapolated(points, cfg.queries)
    text_flops = text_info["flops_per_query_closed_form"]
    for p in points:
        pair = online["flops_per_pair_closed_form"]
        p.extra["similarity_flops_per_query_closed_form"] = None if pair is None else pair * p.gallery
        p.extra["total_flops_per_query_closed_form"] = None if pair is None else pair * p.gallery + text_flops
    del gallery, runner
    return {
        "offline": offline,
        "text": text_info,
        "online": {
            **online,
            "gallery_device": str(device),
            "k": cfg.k,
            "topk_path": topk_path,
            "similarity_form": getattr(method, "similarity_form", lambda: "inner product")(),
        },
        "points": [asdict(p) for p in points],
        "fit": None if fit is None else asdict(fit),
    }


def ratio_spread(numerator: Sequence[float] | None, denominator: Sequence[float] | None) -> dict[str, Any] | None:
    """Spread of a latency ratio over the repeats: every repeat of the numerator over every repeat of the
    denominator (the repeats are independent, so no pairing is implied) -> min, q1, median, q3, max."""
    if not numerator or not denominator or min(denominator) <= 0:
        return None
    ratios = [a / b for a in numerator for b in denominator]
    stats = Stats.of(ratios)
    return {
        "min": stats.min,
        "q1": stats.q1,
        "median": stats.median,
        "q3": stats.q3,
        "max": stats.max,
        "pairs": len(ratios),
    }


#: X-Pool's cheapest exact inference form (``fold_norms``), timed beside its reference form
XPOOL_FOLDED = "xpool-folded"
XPOOL_FORMS_NOTE = (
    "X-Pool is timed in two exact forms with the same parameters and the same scores (to float rounding): "
    "'xpool', the reference form (LN2, W_l, residual and LN3 applied per pair, O(D^2) per pair, as the "
    "official code computes it), and 'xpool-folded', the cheapest exact form (LN2, W_l, residual and LN3 "
    "folded through per-video Gram matrices, O(FD + F^2) per pair). The fair headline is the folded "
    "ratio: a cost claim should be made against the cheapest exact form of each method. The reference "
    "ratio is shown beside it because it is what the official implementation costs."
)


def has_ratio_pair(names: list[str] | set[str]) -> bool:
    """Prompt Switch and at least one X-Pool form are measured, so a ratio can be given."""
    return "promptswitch" in names and bool({"xpool", XPOOL_FOLDED} & set(names))


def ratio_table(results: dict[str, Any], numerator: str = "xpool", denominator: str = "promptswitch") -> list[dict]:
    """Online latency per query of ``numerator`` over ``denominator`` at the sizes both report."""
    if numerator not in results or denominator not in results:
        return []
    num = {p["gallery"]: p for p in results[numerator]["points"]}
    den = {p["gallery"]: p for p in results[denominator]["points"]}
    rows = []
    for n in sorted(set(num) & set(den)):
        a, b = num[n]["latency_per_query_s"], den[n]["latency_per_query_s"]
        if a is None or b is None:
            continue
        measured = num[n]["status"] == "measured" and den[n]["status"] == "measured"
        spread = ratio_spread(a.get("values"), b.get("values")) if measured else None
        rows.append(
            {
                "gallery": n,
                f"{numerator}_s_per_query": a["median"],
                f"{denominator}_s_per_query": b["median"],
                "ratio": a["median"] / b["median"] if b["median"] > 0 else None,
                "ratio_spread": spread,
                "status": "measured" if measured else "extrapolated",
            }
        )
    return rows


def run_efficiency(
    cfg: EfficiencyConfig, out_dir: Path | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Measure every method; write ``efficiency.json`` and the scaling plot into ``out_dir`` if given."""
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    names = cfg.methods or efficiency_methods()
    for name in names:
        method_entry(name)  # fail early on unknown names
    errors = [e for name in names if (e := frame_count_error(name, cfg.frames, cfg.options.get(name)))]
    if errors:  # before anything is measured: a late failure would throw the finished methods away
        raise ValueError("; ".join(errors) + " (choose --frames, or set the option with --set)")
    sizes = gallery_sizes(cfg.gallery, cfg.sweep, cfg.min_gallery, cfg.points_per_decade)
    ratio_pair = {"xpool", XPOOL_FOLDED, "promptswitch"}
    # the ratio's extra sizes stay inside the requested range (never beyond --gallery)
    ratio_sizes = tuple(g for g in cfg.ratio_galleries if min(sizes) <= g <= max(sizes))
    started = time.time()
    methods: dict[str, Any] = {}
    per_method = {
        name: sorted(set(sizes) | set(ratio_sizes if name in ratio_pair and has_ratio_pair(names) else ()))
        for name in names
    }
    total = sum(STAGES_PER_METHOD + len(s) for s in per_method.values())
    with (progress or SilentProgress()).task("efficiency", total) as task:
        for name in names:
            methods[name] = measure_method(name, cfg, per_method[name], device, task.advance)
    result = {
        "schema_version": SCHEMA_VERSION,
        "kind": "psbench-efficiency",
        "config": asdict(cfg),
        "gallery_sizes": sizes,
        "environment": environment(device),
        "synthetic_embeddings": SYNTHETIC_NOTE,
        "flop_convention": FLOP_NOTE,
        "online_stage": (
            "psbench.retrieval.engine.topk (method.similarity in blocks + exact top-k; each method's topk_path says "
            "whether the bfloat16 prefilter ran); text tower excluded"
        ),
        "methods": methods,
        "xpool_vs_promptswitch": ratio_table(methods),
        "xpool_folded_vs_promptswitch": ratio_table(methods, XPOOL_FOLDED),
        "xpool_forms": XPOOL_FORMS_NOTE,
        "wall_seconds": time.time() - started,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic.write_json(out_dir / "efficiency.json", result)
        plot_scaling(result, out_dir)
    return result


# -- plot ------------------------------------------------------------------------------------------------
def plot_scaling(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Log-log online latency per query vs gallery size; measured solid, extrapolated hollow + dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (name, res) in enumerate(result["methods"].items()):
        color = f"C{i % 10}"
        pts = [p for p in res["points"] if p["latency_per_query_s"] is not None]
        meas = [(p["gallery"], p["latency_per_query_s"]["median"]) for p in pts if p["status"] == "measured"]
        extr = [(p["gallery"], p["latency_per_query_s"]["median"]) for p in pts if p["status"] != "measured"]
        if meas:
            ax.plot(*zip(*meas, strict=True), "-o", color=color, label=f"{name} (measured)")
        if extr:
            joined = (meas[-1:] if meas else []) + extr
            ax.plot(*zip(*joined, strict=True), "--", color=color)
            ax.plot(*zip(*extr, strict=True), "o", mfc="none", color=color, label=f"{name} (extrapolated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size N (videos)")
    ax.set_ylabel("online latency per query (s): similarity + top-k")
    cfg = result["config"]
    ax.set_title(f"{cfg['arch']}, {cfg['device']} {cfg['dtype']}, F={cfg['frames']}, k={cfg['k']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out_dir / "efficiency_scaling.png", out_dir / "efficiency_scaling.pdf"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths

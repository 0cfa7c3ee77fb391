"""Exact search beyond memory: a disk-backed sharded index of 10M random D=512 embeddings vs faiss-cpu.

One run, each measured step in a fresh subprocess (so its peak RSS, ``VmHWM``, is its own):

1. ``build``: ``psbench.retrieval.sharded_index.write_sharded_index`` writes the gallery (random unit vectors,
   ``--storage`` fp16 by default: 1 KiB per video, ~10 GB at 10M) in shards, memory bounded by one shard;
   rerunning continues an interrupted build.
2. ``search``: ``ShardedIndex.topk``, the function ``psbench index search DIR`` calls after encoding the
   queries, streams every shard (each block upcast to float32, exact blocked top-k, ``merge_topk``) for
   Q queries: latency per query, bytes read (``/proc/self/io``: ``rchar`` through read calls and
   ``read_bytes`` from the storage device), peak RSS. Run cold (the shards' pages evicted from the page
   cache first with ``posix_fadvise(DONTNEED)``) and then warm.
3. ``faiss``: faiss-cpu's exhaustive search on the same stored values: ``IndexFlatIP`` if the float32
   gallery fits in half the available memory, else ``IndexScalarQuantizer(QT_fp16, METRIC_INNER_PRODUCT)``
   (fp16 codes: the same values psbench scores, decoded to float32). faiss is a comparison only.
4. In this process: top-10 id lists vs faiss (differences explained with float64 scores of the stored
   values), and the sharded search over the first ``--subset`` videos vs psbench's in-memory
   ``engine.topk`` on the same values.
5. X-Pool at this size is EXTRAPOLATED (its gallery does not fit): index bytes per video from the
   method's real ``encode_video`` tensors at ``--xpool-arch`` shapes stored in ``--storage``, and latency
   from a small measured (Q, N) point scaled linearly.

Writes ``--out`` (JSON) and a Markdown summary beside it (same name, ``.md``).

Usage: ``python benchmarks/index_10m.py run --gallery 10000000 --index-dir /tmp/psbench-10m/index
--out reports/cpu_2cores/index_10m.json``
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console

from psbench.backbone.clip import create_clip
from psbench.catalog import create_method
from psbench.files import atomic
from psbench.progress import RichProgress
from psbench.retrieval import engine
from psbench.retrieval.sharded_index import STORAGE_DTYPES, open_sharded_index, random_shard_source, write_sharded_index
from psbench.runs.dirs import environment

console = Console(stderr=True)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
FINGERPRINT = "random-unit-vectors"
QUERY_SEED = 12345


# -- process facts ---------------------------------------------------------------------------------------
def proc_io() -> dict[str, int]:
    """``/proc/self/io`` counters (rchar: bytes through read calls; read_bytes: from the storage device)."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def peak_rss_bytes() -> dict[str, Any]:
    """This process's peak resident memory: VmHWM from /proc/self/status and ru_maxrss."""
    hwm = None
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return {"vmhwm_bytes": hwm, "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def machine_load() -> dict[str, Any]:
    """Load average and this process's CPU seconds (the machine may be shared: context for the timings)."""
    times = os.times()
    return {"loadavg": list(os.getloadavg()), "cpu_seconds": times.user + times.system}


def evict_page_cache(root: Path) -> None:
    """Drop the shards' clean pages from the page cache (``posix_fadvise DONTNEED``): a cold read."""
    for path in sorted(root.glob("shard-*.safetensors")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def queries(q: int, dim: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(QUERY_SEED)
    return {"text": torch.nn.functional.normalize(torch.randn(q, dim, generator=gen), dim=-1)}  # (Q, D)


def dot_method() -> torch.nn.Module:
    """Mean pooling's similarity is the inner product of the stored embeddings (the weights play no part)."""
    torch.manual_seed(0)
    return create_method("meanpool", create_clip("psbench-tiny")).eval()


# -- phases (each in its own process) -----------------------------------------------------------------------
@app.command("build")
def build(index_dir: Path, gallery: int, dim: int, storage: str, shard_size: int, seed: int, result: Path) -> None:
    """Write (or finish) the random gallery as a sharded index."""
    start = time.perf_counter()
    with RichProgress(console=console) as progress:
        index = write_sharded_index(
            index_dir,
            "meanpool",
            gallery,
            random_shard_source(dim, seed),
            FINGERPRINT,
            storage,
            shard_size,
            {"source": f"random unit vectors, seed {seed}", "dim": dim},
            progress,
        )
    out = {"seconds": time.perf_counter() - start, "bytes": index.nbytes(), "shards": len(index.shards)}
    atomic.write_json(result, {**out, **peak_rss_bytes(), "io": proc_io()})


@app.command("search")
def search(index_dir: Path, q: int, dim: int, k: int, result: Path, cold: bool = False, threads: int = 0) -> None:
    """Stream the whole index for Q queries, exact top-k; time, bytes read and peak RSS of this process."""
    if threads:
        torch.set_num_threads(threads)
    method, text = dot_method(), queries(q, dim)
    index = open_sharded_index(index_dir)
    if cold:
        evict_page_cache(index_dir)
    io0, load0 = proc_io(), machine_load()
    start = time.perf_counter()
    with RichProgress(console=console) as progress:
        scores, indices = index.topk(method, text, k, progress=progress)
    seconds = time.perf_counter() - start
    io1, load1 = proc_io(), machine_load()
    torch.save({"scores": scores, "indices": indices}, result.with_suffix(".pt"))
    io = {key: io1[key] - io0[key] for key in io1 if key in io0}
    out = {"seconds": seconds, "seconds_per_query": seconds / q, "io": io, "threads": torch.get_num_threads()}
    out |= {"cpu_seconds": load1["cpu_seconds"] - load0["cpu_seconds"], "loadavg": [load0["loadavg"], load1["loadavg"]]}
    atomic.write_json(result, {**out, **peak_rss_bytes(), "cold": cold})


@app.command("faiss")
def faiss_search(index_dir: Path, q: int, dim: int, k: int, result: Path, threads: int = 0) -> None:
    """faiss exhaustive search over the same stored values (read and verified through the index)."""
    import faiss
    import numpy as np

    index = open_sharded_index(index_dir)
    n = len(index)
    faiss.omp_set_num_threads(threads or torch.get_num_threads())
    flat_fits = n * dim * 4 < _available_memory() // 2
    if flat_fits:
        kind, fidx = "IndexFlatIP", faiss.IndexFlatIP(dim)
    else:
        kind = "IndexScalarQuantizer(QT_fp16, METRIC_INNER_PRODUCT)"
        fidx = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    for entry in index.shards:
        for _, block in index.shard_blocks(entry, 131_072):
            fidx.add(np.ascontiguousarray(block["video"].float().numpy()))  # (rows, D) float32, encoded by faiss
    add_seconds = time.perf_counter() - start
    text = queries(q, dim)["text"].numpy()
    load0 = machine_load()
    start = time.perf_counter()
    scores, ids = fidx.search(text, k)
    seconds = time.perf_counter() - start
    load1 = machine_load()
    torch.save({"scores": torch.from_numpy(scores), "indices": torch.from_numpy(ids)}, result.with_suffix(".pt"))
    out = {"index": kind, "add_seconds": add_seconds, "seconds": seconds, "seconds_per_query": seconds / q}
    out |= {"threads": faiss.omp_get_max_threads(), "faiss_version": faiss.__version__}
    out |= {"cpu_seconds": load1["cpu_seconds"] - load0["cpu_seconds"], "loadavg": [load0["loadavg"], load1["loadavg"]]}
    atomic.write_json(result, {**out, **peak_rss_bytes()})


def _available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _phase(name: str, *args: object) -> dict[str, Any]:
    """Run one phase of this script in a fresh Python process; its JSON result."""
    result = Path(str(args[-1]))
    cmd = [sys.executable, str(Path(__file__).resolve()), name, *(str(a) for a in args[:-1])]
    cmd += [str(result)]
    console.print(f"[bold]{name}[/]: {' '.join(cmd[2:])}")
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


# -- analysis in the parent ------------------------------------------------------------------------------------
def stored_rows(index: Any, rows: list[int]) -> torch.Tensor:
    """float64 copies of the stored embeddings of ``rows`` (random access through safetensors)."""
    from safetensors import safe_open

    out = []
    for row in rows:
        entry = next(s for s in index.shards if s["start"] <= row < s["stop"])
        with safe_open(str(index.root / entry["file"]), "pt") as handle:
            local = row - entry["start"]
            out.append(handle.get_slice("video")[local : local + 1].double())
    return torch.cat(out)  # (rows, D)


def compare_with_faiss(index: Any, ours: dict, theirs: dict, text: torch.Tensor) -> dict[str, Any]:
    """Whole top-k id lists equal per query; each differing query explained with float64 scores."""
    a, b = ours["indices"], theirs["indices"].to(torch.int64)
    equal = (a == b).all(dim=1)
    differing = []
    for qi in torch.nonzero(~equal).flatten().tolist()[:20]:
        union = sorted(set(a[qi].tolist()) | set(b[qi].tolist()))
        exact = (stored_rows(index, union) @ text[qi].double()).tolist()  # float64 scores of the stored values
        by_id = dict(zip(union, exact, strict=True))
        ours_ids, their_ids = a[qi].tolist(), b[qi].tolist()
        swapped = {i for x, y in zip(ours_ids, their_ids, strict=True) if x != y for i in (x, y)}
        gap = max(by_id[i] for i in swapped) - min(by_id[i] for i in swapped) if swapped else 0.0
        truth = sorted(union, key=lambda i: (-by_id[i], i))[: a.shape[1]]
        differing.append(
            {
                "query": qi,
                "same_set": set(ours_ids) == set(their_ids),
                "float64_score_spread_of_differing_ids": gap,
                "psbench_equals_float64_order": ours_ids == truth,
                "faiss_equals_float64_order": their_ids == truth,
            }
        )
    return {
        "queries_with_equal_top_k": int(equal.sum()),
        "queries": int(a.shape[0]),
        "fraction_equal": float(equal.float().mean()),
        "max_abs_score_difference": float((ours["scores"] - theirs["scores"]).abs().max()),
        "differing_queries": differing,
    }


def subset_check(index: Any, text: dict, k: int, subset: int, storage: str) -> dict[str, Any]:
    """Sharded search over the first shards (``subset`` videos) vs ``engine.topk`` in memory on those values."""
    method = dot_method()
    shards = [i for i, s in enumerate(index.shards) if s["stop"] <= subset]
    n = index.shards[shards[-1]]["stop"]
    sharded = index.topk(method, text, k, shards=shards)
    values = torch.cat([block["video"].float() for s in shards for _, block in index.shard_blocks(index.shards[s], n)])
    memory = engine.topk(method, text, {"video": values}, k)  # (N_sub, D) float32 in memory
    return {
        "videos": n,
        "ids_equal": bool(torch.equal(sharded[1], memory[1])),
        "scores_equal": bool(torch.equal(sharded[0], memory[0])),
        "storage": storage,
    }


def xpool_extrapolation(arch: str, frames: int, storage: str, gallery: int, q: int, k: int) -> dict[str, Any]:
    """X-Pool's index bytes per video from its real cached tensors, and its latency extrapolated linearly."""
    from psbench.efficiency.measure import SyntheticEncoded, bytes_per_item

    torch.manual_seed(0)
    method = create_method("xpool", create_clip(arch)).eval()
    size = int(method.clip.visual.image_size[0]) if hasattr(method.clip.visual, "image_size") else 224
    with torch.inference_mode():
        video = method.encode_video(torch.randn(1, frames, 3, size, size), torch.ones(1, frames, dtype=torch.bool))
        text = method.encode_text(torch.randint(1, 1000, (1, int(method.clip.positional_embedding.shape[0]))))
    per_video = bytes_per_item(video, STORAGE_DTYPES[storage])
    mq, mn = 16, 2000  # the measured point
    gallery_enc = SyntheticEncoded(video, mn, torch.device("cpu"), torch.float32, seed=0).take(mn)
    query_enc = SyntheticEncoded(text, mq, torch.device("cpu"), torch.float32, seed=1).take(mq)
    engine.topk(method, query_enc, gallery_enc, k)  # warm-up
    start = time.perf_counter()
    engine.topk(method, query_enc, gallery_enc, k)
    seconds = time.perf_counter() - start
    per_pair = seconds / (mq * mn)
    return {
        "status": "extrapolated",
        "arch": arch,
        "frames": frames,
        "cached_tensors": {key: list(v.shape[1:]) for key, v in video.items()},
        "storage": storage,
        "index_bytes_per_video": per_video,
        "index_bytes_at_gallery": per_video * gallery,
        "measured_point": {"queries": mq, "videos": mn, "seconds": seconds},
        "latency_per_query_s_extrapolated": per_pair * gallery,
        "latency_query_set_s_extrapolated": per_pair * gallery * q,
    }


def markdown(r: dict[str, Any]) -> str:
    c, s, w, f = r["config"], r["search_cold"], r["search_warm"], r["faiss"]
    gib = 2**30
    lines = [
        f"# Exact top-{c['k']} over a disk-backed index of {c['gallery']:,} videos (D={c['dim']}, {c['storage']})",
        "",
        f"Generated by `benchmarks/index_10m.py` on {r['environment'].get('device_name', 'cpu')}, "
        f"{s['threads']} threads. Random unit-vector embeddings; {c['queries']:,} queries; "
        f"{r['build']['shards']} shards, {r['build']['bytes'] / 1e9:.2f} GB on disk.",
        "",
        "| what | total s | s per query | bytes read (rchar) | from storage (read_bytes) | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in (("psbench sharded search, cold page cache", s), ("psbench sharded search, warm", w)):
        lines.append(
            f"| {label} | {row['seconds']:.1f} | {row['seconds_per_query'] * 1e3:.1f} ms | "
            f"{row['io'].get('rchar', 0) / 1e9:.2f} GB | {row['io'].get('read_bytes', 0) / 1e9:.2f} GB | "
            f"{row['vmhwm_bytes'] / gib:.2f} GiB |"
        )
    if f.get("available", True):
        lines.append(
            f"| faiss {f['index']} ({f['threads']} threads, in RAM) | {f['seconds']:.1f} | "
            f"{f['seconds_per_query'] * 1e3:.1f} ms | - | - | {f['vmhwm_bytes'] / gib:.2f} GiB |"
        )
    lines += [
        "",
        f"- machine load during the cold search: loadavg {s['loadavg'][0][0]:.1f} -> {s['loadavg'][1][0]:.1f} "
        f"on {os.cpu_count()} cores (shared machine); CPU seconds per query: psbench "
        f"{s['cpu_seconds'] / c['queries'] * 1e3:.1f} ms"
        + (f", faiss {f['cpu_seconds'] / c['queries'] * 1e3:.1f} ms" if f.get("available", True) else ""),
        f"- build: {r['build']['seconds']:.0f} s, peak RSS {r['build']['vmhwm_bytes'] / gib:.2f} GiB",
    ]
    lines.append(
        f"- peak RSS of the search under 4 GiB: {'yes' if r['search_peak_rss_under_4gib'] else 'NO'} "
        f"(VmHWM of a fresh process, {max(s['vmhwm_bytes'], w['vmhwm_bytes']) / gib:.2f} GiB)"
    )
    if f.get("available", True):
        cmp = r["vs_faiss"]
        lines.append(
            f"- faiss / psbench (cold): {r['faiss_over_psbench_cold']:.2f}x; warm: {r['faiss_over_psbench_warm']:.2f}x"
        )
        lines.append(
            f"- top-{c['k']} id lists equal to faiss's: {cmp['queries_with_equal_top_k']}/{cmp['queries']} queries "
            f"(max |score difference| {cmp['max_abs_score_difference']:.2e})"
        )
        for d in cmp["differing_queries"]:
            lines.append(
                f"  - query {d['query']}: same set {d['same_set']}, float64 spread of the differing ids "
                f"{d['float64_score_spread_of_differing_ids']:.2e}, psbench = float64 order "
                f"{d['psbench_equals_float64_order']}, faiss = float64 order {d['faiss_equals_float64_order']}"
            )
    sub = r["subset_vs_in_memory"]
    lines.append(
        f"- first {sub['videos']:,} videos: sharded search = in-memory `engine.topk` on the same values: "
        f"ids {sub['ids_equal']}, scores {sub['scores_equal']}"
    )
    x = r["xpool"]
    lines += [
        "",
        f"X-Pool (EXTRAPOLATED, marked *): {x['index_bytes_per_video']:,} bytes per video "
        f"({x['arch']}, F={x['frames']}, {x['storage']}; cached tensors {x['cached_tensors']}) = "
        f"{x['index_bytes_at_gallery'] / 1e9:.0f} GB at {c['gallery']:,} videos; "
        f"latency* {x['latency_per_query_s_extrapolated']:.1f} s per query, "
        f"{x['latency_query_set_s_extrapolated'] / 3600:.1f} h for {c['queries']:,} queries "
        f"(linear from {x['measured_point']['queries']} x {x['measured_point']['videos']} measured).",
        "",
    ]
    return "\n".join(lines)


@app.command("run")
def run(
    gallery: Annotated[int, typer.Option(help="N videos.")] = 10_000_000,
    dim: Annotated[int, typer.Option(help="D.")] = 512,
    queries_n: Annotated[int, typer.Option("--queries", help="Q.")] = 1000,
    k: Annotated[int, typer.Option("-k")] = 10,
    storage: Annotated[str, typer.Option(help="fp32, fp16 or bf16.")] = "fp16",
    shard_size: Annotated[int, typer.Option(help="Videos per shard.")] = 500_000,
    subset: Annotated[int, typer.Option(help="Videos of the in-memory check.")] = 1_000_000,
    seed: Annotated[int, typer.Option()] = 0,
    index_dir: Annotated[Path, typer.Option(help="Where the gallery is written.")] = Path("/tmp/psbench-10m/index"),
    faiss: Annotated[bool, typer.Option(help="Compare with faiss-cpu.")] = True,
    xpool_arch: Annotated[str, typer.Option(help="open_clip architecture of X-Pool's shapes.")] = "ViT-B-32-quickgelu",
    xpool_frames: Annotated[int, typer.Option()] = 12,
    threads: Annotated[int, typer.Option(help="Threads (0: torch's default).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Results JSON (a .md summary is written beside it).")] = None,
) -> None:
    """Build, search cold and warm, faiss, checks, X-Pool extrapolation; write the JSON and Markdown."""
    work = index_dir.parent / f"{index_dir.name}_results"
    work.mkdir(parents=True, exist_ok=True)
    r: dict[str, Any] = {
        "config": {"gallery": gallery, "dim": dim, "queries": queries_n, "k": k, "storage": storage}
        | {"shard_size": shard_size, "seed": seed, "index_dir": str(index_dir)},
        "environment": environment("cpu"),
        "synthetic_embeddings": "random unit vectors; latency, bytes and memory do not depend on the values",
    }
    build_json = work / "build.json"
    previous = json.loads(build_json.read_text()) if build_json.is_file() else None
    r["build"] = _phase("build", index_dir, gallery, dim, storage, shard_size, seed, work / "build_check.json")
    build_keys = {key: r["config"][key] for key in ("gallery", "dim", "storage", "shard_size", "seed", "index_dir")}
    if previous is not None and previous.get("config") == build_keys:  # already built by an earlier invocation
        r["build_check"], r["build"] = r["build"], previous | {"measured_in_an_earlier_invocation": True}
    else:
        atomic.write_json(build_json, r["build"] | {"config": build_keys})
    r["search_cold"] = _phase(
        "search", index_dir, queries_n, dim, k, "--cold", f"--threads={threads}", work / "s1.json"
    )
    r["search_warm"] = _phase(
        "search", index_dir, queries_n, dim, k, "--no-cold", f"--threads={threads}", work / "s2.json"
    )
    r["search_peak_rss_under_4gib"] = max(r["search_cold"]["vmhwm_bytes"], r["search_warm"]["vmhwm_bytes"]) < 4 * 2**30
    ours = torch.load(work / "s1.pt", weights_only=True)
    again = torch.load(work / "s2.pt", weights_only=True)
    r["cold_equals_warm"] = bool(
        torch.equal(ours["indices"], again["indices"]) and torch.equal(ours["scores"], again["scores"])
    )
    index = open_sharded_index(index_dir)
    text = queries(queries_n, dim)
    r["faiss"] = {"available": False}
    if faiss:
        try:
            import faiss as _  # noqa: F401
        except ImportError:
            faiss = False
    if faiss:
        r["faiss"] = {"available": True} | _phase(
            "faiss", index_dir, queries_n, dim, k, f"--threads={threads}", work / "f.json"
        )
        theirs = torch.load(work / "f.pt", weights_only=True)
        r["vs_faiss"] = compare_with_faiss(index, ours, theirs, text["text"])
        r["faiss_over_psbench_cold"] = r["faiss"]["seconds"] / r["search_cold"]["seconds"]
        r["faiss_over_psbench_warm"] = r["faiss"]["seconds"] / r["search_warm"]["seconds"]
    r["subset_vs_in_memory"] = subset_check(index, text, k, min(subset, gallery), storage)
    r["xpool"] = xpool_extrapolation(xpool_arch, xpool_frames, storage, gallery, queries_n, k)
    text_md = markdown(r)
    console.print(text_md)
    if out is not None:
        atomic.write_json(out, r)
        atomic.write_text(out.with_suffix(".md"), text_md)
        console.print(f"written {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    app()

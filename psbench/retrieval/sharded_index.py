"""A sharded, disk-backed gallery index: exact top-k over galleries larger than memory.

Directory layout (``DIR``)::

    manifest.json            format, method, storage dtype, keys (per-item shape, dtype), item count,
                             shard size, model fingerprint, provenance (meta), the ids file's sha256 and,
                             per FINISHED shard: file, [start, stop), bytes, sha256
    ids.txt                  one video id per line, gallery order
    shard-00000.safetensors  items [0, shard_size) of every Encoded key (safetensors: memory-mappable,
                             readable by any safetensors reader); header metadata repeats the shard's
                             number, bounds and the model fingerprint (one sorted-JSON metadata key)

Build (:func:`write_sharded_index`) writes one shard at a time (memory: one shard), each through a
temporary file, fsync and rename, then records its sha256 in the manifest (also written atomically).
A rerun after a crash keeps the finished shards after checking their hashes and continues; the
shard files are deterministic, so an interrupted + resumed build is bit-identical to an
uninterrupted one.

Search (:meth:`ShardedIndex.topk`) streams each shard in row blocks with positioned reads into
buffers of one block (not ``mmap``: mapped pages would count in the process's resident memory),
upcasts each block to float32 and runs ``engine.topk`` on it; the per-block top-k (global indices)
are merged exactly with ``engine.merge_topk``. Every byte that is scored is hashed on the way (one
pass; shards with several keys are hashed in a sequential pass first) and the result is returned
only when every shard matched the manifest: a missing, truncated, half-written, changed or foreign
shard is an error naming the file, never skipped. Under torchrun the shards are split across ranks
(:func:`distributed_topk`) and the per-rank top-k are merged with ``merge_topk``: the same result
as one process, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from psbench.files import atomic, jsonio
from psbench.method import Encoded, RetrievalMethod
from psbench.progress import Progress, SilentProgress
from psbench.retrieval import engine

log = logging.getLogger(__name__)

FORMAT = "psbench-sharded-index"
VERSION = 1
MANIFEST = "manifest.json"
IDS_FILE = "ids.txt"
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "BOOL": torch.bool}
_ST_DTYPES |= {"I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "F64": torch.float64}
SHARD_META_KEY = "psbench"
DEFAULT_READ_ROWS = 131_072  # rows per streamed block (fp16 at D=512: 128 MiB read, 256 MiB as float32)


class ShardedIndexError(ValueError):
    """A sharded index is incomplete, corrupted or does not match; the message names the file."""


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def is_sharded_index(path: Path) -> bool:
    """Whether ``path`` is a sharded index directory (it holds a manifest)."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def _storage_dtype(name: str) -> torch.dtype:
    if name not in STORAGE_DTYPES:
        raise ShardedIndexError(f"storage dtype {name!r}; valid: {', '.join(STORAGE_DTYPES)}")
    return STORAGE_DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _stored(value: Tensor, storage: torch.dtype) -> Tensor:
    """A tensor as the index stores it: floating tensors in ``storage``, others unchanged (CPU, contiguous)."""
    value = value.detach().cpu()
    return (value.to(storage) if value.is_floating_point() else value).contiguous()


# -- the safetensors header ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one shard: where each key's rows lie in the file, plus the metadata."""

    data_start: int
    tensors: dict[str, dict[str, Any]]  # key -> {dtype, shape, data_offsets}
    metadata: dict[str, str]


def read_header(path: Path) -> ShardHeader:
    """The safetensors header of ``path`` (8-byte little-endian length + JSON); errors name the file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ShardedIndexError(f"shard {path}: truncated (no safetensors header); rebuild it")
            (size,) = struct.unpack("<Q", head)
            if size > 100 << 20:
                raise ShardedIndexError(f"shard {path}: not a safetensors file (header of {size} bytes)")
            raw = handle.read(size)
    except FileNotFoundError:
        raise ShardedIndexError(f"shard {path} is missing") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardedIndexError(f"shard {path}: unreadable safetensors header ({exc})") from None
    metadata = header.pop("__metadata__", {}) or {}
    try:  # one key holding sorted JSON: safetensors writes several metadata keys in a random order
        metadata = {k: str(v) for k, v in json.loads(metadata.get(SHARD_META_KEY, "{}")).items()}
    except (json.JSONDecodeError, AttributeError):
        raise ShardedIndexError(f"shard {path}: unreadable psbench metadata in its header") from None
    return ShardHeader(8 + size, header, metadata)


# -- the manifest ------------------------------------------------------------------------------------------
@dataclass
class ShardedIndex:
    """An opened sharded index (the manifest; shards are read on demand)."""

    root: Path
    manifest: dict[str, Any]

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest["meta"]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    def __len__(self) -> int:
        return int(self.manifest["num_items"])

    def nbytes(self) -> int:
        """Bytes of all shard files (what one search reads)."""
        return sum(int(s["bytes"]) for s in self.shards)

    def bytes_per_item(self) -> int:
        """Stored bytes per video over all keys (headers excluded)."""
        return sum(
            int(np.prod(k["shape"], dtype=np.int64)) * torch.empty((), dtype=getattr(torch, k["dtype"])).element_size()
            for k in self.manifest["keys"].values()
        )

    def video_ids(self, indices: Sequence[int] | None = None) -> list[str]:
        """The ids at ``indices`` (all when None), read from ids.txt while checking its sha256."""
        path = self.root / IDS_FILE
        wanted = None if indices is None else {int(i) for i in indices}
        found: dict[int, str] = {}
        every: list[str] = []
        h = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for i, line in enumerate(handle):
                    h.update(line)
                    if wanted is None:
                        every.append(line.decode("utf-8").rstrip("\n"))
                    elif i in wanted:
                        found[i] = line.decode("utf-8").rstrip("\n")
        except FileNotFoundError:
            raise ShardedIndexError(f"ids file {path} is missing") from None
        if h.hexdigest() != self.manifest["ids_sha256"]:
            raise ShardedIndexError(f"ids file {path} changed since the index was built (sha256 mismatch)")
        if wanted is None:
            return every
        return [found[int(i)] for i in indices]  # type: ignore[union-attr]

    def check_shard_header(self, entry: dict[str, Any]) -> ShardHeader:
        """The header of one finished shard, checked against the manifest (size, model, bounds, shapes)."""
        path = self.root / entry["file"]
        if not path.is_file():
            raise ShardedIndexError(f"shard {path} is missing (listed in {self.root / MANIFEST})")
        header = read_header(path)
        fingerprint = header.metadata.get("model_fingerprint")
        if fingerprint != self.manifest["model_fingerprint"]:
            raise ShardedIndexError(
                f"shard {path} was written by another model (fingerprint {fingerprint}, "
                f"index {self.manifest['model_fingerprint']})"
            )
        size = path.stat().st_size
        if size != int(entry["bytes"]):
            raise ShardedIndexError(
                f"shard {path}: {size} bytes, the manifest says {entry['bytes']} (truncated or changed file)"
            )
        bounds = (header.metadata.get("start"), header.metadata.get("stop"))
        if bounds != (str(entry["start"]), str(entry["stop"])):
            raise ShardedIndexError(f"shard {path} holds items {bounds}, expected [{entry['start']}, {entry['stop']})")
        rows = int(entry["stop"]) - int(entry["start"])
        for key, spec in self.manifest["keys"].items():
            got = header.tensors.get(key)
            expected = [rows, *spec["shape"]]
            if (
                got is None
                or list(got["shape"]) != expected
                or _ST_DTYPES.get(got["dtype"]) != getattr(torch, spec["dtype"])
            ):
                raise ShardedIndexError(f"shard {path}: tensor {key!r} is {got}, expected shape {expected}")
        return header

    def verify(self, progress: Progress | None = None) -> None:
        """Check every shard (header and full sha256) and the ids file; raise naming the first bad file."""
        progress = progress or SilentProgress()
        with progress.task("verify shards", len(self.shards)) as task:
            for entry in self.shards:
                self.check_shard_header(entry)
                path = self.root / entry["file"]
                if _file_digest(path) != entry["sha256"]:
                    raise ShardedIndexError(f"shard {path} changed since it was written (sha256 mismatch)")
                task.advance(1)
        self.video_ids([])

    def shard_blocks(self, entry: dict[str, Any], read_rows: int) -> Iterator[tuple[int, Encoded]]:
        """(global offset, Encoded block in storage dtype) of one shard, read in ``read_rows`` row blocks.

        The file's bytes are hashed as they are read; after the last block a mismatch raises.
        """
        header = self.check_shard_header(entry)
        path = self.root / entry["file"]
        start, rows = int(entry["start"]), int(entry["stop"]) - int(entry["start"])
        keys = sorted(header.tensors, key=lambda k: header.tensors[k]["data_offsets"][0])
        sequential = len(keys) == 1
        if not sequential and _file_digest(path) != entry["sha256"]:  # several keys: hash in one pass first
            raise ShardedIndexError(f"shard {path} changed since it was written (sha256 mismatch)")
        h = hashlib.sha256()
        fd = os.open(path, os.O_RDONLY)
        try:
            if sequential:
                h.update(os.pread(fd, header.data_start, 0))
            plan = []
            for key in keys:
                info = header.tensors[key]
                dtype = _ST_DTYPES[info["dtype"]]
                row_bytes = (info["data_offsets"][1] - info["data_offsets"][0]) // max(rows, 1)
                plan.append((key, dtype, info["shape"][1:], header.data_start + info["data_offsets"][0], row_bytes))

            def read(r0: int, r1: int) -> Encoded:
                out = {}
                for key, dtype, shape, base, row_bytes in plan:
                    buffer = torch.empty((r1 - r0) * row_bytes, dtype=torch.uint8)  # (bytes,)
                    view = memoryview(buffer.numpy())
                    got = os.preadv(fd, [view], base + r0 * row_bytes)
                    if got != len(view):
                        raise ShardedIndexError(f"shard {path}: short read at row {r0} (file changed during search)")
                    if sequential:
                        h.update(view)
                    out[key] = buffer.view(dtype).view(r1 - r0, *shape)  # (rows, ...)
                return out

            bounds = [(r0, min(r0 + read_rows, rows)) for r0 in range(0, rows, read_rows)]
            with ThreadPoolExecutor(1) as pool:  # read (and hash) the next block while this one is scored
                pending = pool.submit(read, *bounds[0]) if bounds else None
                for i, (r0, _) in enumerate(bounds):
                    block = pending.result()
                    pending = pool.submit(read, *bounds[i + 1]) if i + 1 < len(bounds) else None
                    yield start + r0, block
        finally:
            os.close(fd)
        if sequential and h.hexdigest() != entry["sha256"]:
            raise ShardedIndexError(f"shard {path} changed since it was written (sha256 mismatch)")

    def topk(
        self,
        method: RetrievalMethod,
        text: Encoded,
        k: int,
        shards: Sequence[int] | None = None,
        read_rows: int = DEFAULT_READ_ROWS,
        prefilter: str = "auto",
        progress: Progress | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Exact top-k over the given shards (all by default): (scores (Q, k') float32, global indices (Q, k')).

        k' = min(k, items in those shards). Each block is upcast to float32 and scored with
        ``engine.topk``; per-block results are merged with ``engine.merge_topk`` (same tie rule).
        """
        self.require_complete()
        progress = progress or SilentProgress()
        chosen = [self.shards[i] for i in (range(len(self.shards)) if shards is None else shards)]
        total = sum(int(e["stop"]) - int(e["start"]) for e in chosen)
        if total == 0:
            raise ShardedIndexError("no items to search in the chosen shards")
        k = min(k, total)
        best: tuple[Tensor, Tensor] | None = None
        with progress.task(f"search {total} videos in {len(chosen)} shard(s)", total) as task:
            for entry in chosen:
                for offset, block in self.shard_blocks(entry, read_rows):
                    video = {key: v.float() if v.is_floating_point() else v for key, v in block.items()}  # float32
                    kb = min(k, engine.encoded_len(video))
                    scores, local = engine.topk(method, text, video, kb, prefilter=prefilter)  # (Q, kb)
                    part = (scores, local + offset)
                    best = part if best is None else engine.merge_topk([best, part], k)
                    task.advance(engine.encoded_len(video))
        assert best is not None
        return best

    def require_complete(self) -> None:
        """Refuse an index whose build has not finished (some shards missing from the manifest)."""
        expected = _plan(int(self.manifest["num_items"]), int(self.manifest["shard_size"]))
        done = {int(s["shard"]) for s in self.shards}
        missing = [shard_name(i) for i in range(len(expected)) if i not in done]
        if missing or not self.manifest.get("complete"):
            raise ShardedIndexError(
                f"index {self.root} is incomplete: {len(missing)} shard(s) not finished (first: "
                f"{missing[0] if missing else '-'}); the build was interrupted, rerun `psbench index build` to finish"
            )


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read now (never cached: a file changed in place must be seen)."""
    h = hashlib.sha256()
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def _plan(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_items)) for s in range(0, num_items, shard_size)]


def open_sharded_index(root: Path) -> ShardedIndex:
    """Read and check the manifest of a sharded index directory."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ShardedIndexError(f"{root} is not a sharded psbench index (no {MANIFEST})")
    manifest = jsonio.read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ShardedIndexError(f"{path} is not a psbench sharded index manifest ({FORMAT} version {VERSION})")
    return ShardedIndex(root, manifest)


# -- building ----------------------------------------------------------------------------------------------
def write_sharded_index(
    root: Path,
    method: str,
    video_ids: Sequence[str] | int,
    encode_shard: Callable[[int, int], Encoded],
    model_fingerprint: str,
    storage: str = "fp32",
    shard_size: int = 100_000,
    meta: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> ShardedIndex:
    """Write (or finish) a sharded index: ``encode_shard(start, stop)`` returns the Encoded of those items.

    ``video_ids``: the ids in gallery order, or a count (ids ``v0000000``...). Finished shards of an
    earlier, interrupted run with the same settings are verified by sha256 and kept; a directory
    holding an index with other settings is an error. Memory: one shard.
    """
    root = Path(root)
    dtype = _storage_dtype(storage)
    if shard_size < 1:
        raise ShardedIndexError(f"shard size must be >= 1, got {shard_size}")
    if isinstance(video_ids, int):
        width = max(7, len(str(video_ids - 1)))
        ids: Sequence[str] = [f"v{i:0{width}d}" for i in range(video_ids)]
    else:
        ids = list(video_ids)
    n = len(ids)
    if n == 0:
        raise ShardedIndexError("no videos to index")
    if any("\n" in i or "\r" in i for i in ids):
        raise ShardedIndexError("video ids must not contain line breaks")
    if len(set(ids)) != n:
        raise ShardedIndexError("video ids are not unique")
    ids_bytes = "".join(f"{i}\n" for i in ids).encode("utf-8")
    ids_sha = hashlib.sha256(ids_bytes).hexdigest()
    settings = {
        "format": FORMAT,
        "version": VERSION,
        "method": method,
        "storage_dtype": storage,
        "num_items": n,
        "shard_size": shard_size,
        "model_fingerprint": model_fingerprint,
        "ids_sha256": ids_sha,
    }
    plan = _plan(n, shard_size)
    manifest = _resume_manifest(root, settings)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".*.tmp"):
        stale.unlink()
    ids_path = root / IDS_FILE
    if not ids_path.is_file() or _file_digest(ids_path) != ids_sha:
        _atomic_write(ids_path, lambda tmp, data=ids_bytes: Path(tmp).write_bytes(data))
    del ids_bytes
    manifest.setdefault("meta", meta or {})
    manifest.setdefault("shards", [])
    manifest["complete"] = False
    done = {int(s["shard"]): s for s in manifest["shards"]}
    index = ShardedIndex(root, manifest)
    for entry in done.values():  # finished shards must be intact to be kept
        index.check_shard_header(entry)
        if _file_digest(root / entry["file"]) != entry["sha256"]:
            raise ShardedIndexError(
                f"shard {root / entry['file']} changed since it was written (sha256 mismatch); delete it to rebuild it"
            )
    atomic.write_json(root / MANIFEST, manifest)
    with progress_task(progress, f"write {len(plan)} shard(s) of {n} videos", n) as task:
        task.advance(sum(stop - start for i, (start, stop) in enumerate(plan) if i in done))
        for shard, (start, stop) in enumerate(plan):
            if shard in done:
                continue
            encoded = {key: _stored(v, dtype) for key, v in encode_shard(start, stop).items()}  # (rows, ...)
            if engine.encoded_len(encoded) != stop - start:
                raise ShardedIndexError(f"shard {shard}: got {engine.encoded_len(encoded)} items for {stop - start}")
            keys = {k: {"shape": list(v.shape[1:]), "dtype": _dtype_name(v.dtype)} for k, v in encoded.items()}
            if manifest.setdefault("keys", keys) != keys:
                raise ShardedIndexError(f"shard {shard}: keys {keys} differ from the index's {manifest['keys']}")
            path = root / shard_name(shard)
            header_meta = json.dumps(
                {"shard": shard, "start": start, "stop": stop, "model_fingerprint": model_fingerprint}, sort_keys=True
            )
            _atomic_write(
                path, lambda tmp, enc=encoded, md=header_meta: save_file(enc, tmp, metadata={SHARD_META_KEY: md})
            )
            entry = {"shard": shard, "file": path.name, "start": start, "stop": stop}
            entry |= {"bytes": path.stat().st_size, "sha256": _file_digest(path)}
            manifest["shards"].append(entry)
            manifest["shards"].sort(key=lambda s: s["shard"])
            atomic.write_json(root / MANIFEST, manifest)
            del encoded
            task.advance(stop - start)
    manifest["complete"] = True
    atomic.write_json(root / MANIFEST, manifest)
    log.info("sharded index of %d videos in %d shard(s) written to %s", n, len(plan), root)
    return ShardedIndex(root, manifest)


def progress_task(progress: Progress | None, description: str, total: int) -> Any:
    return (progress or SilentProgress()).task(description, total)


def _resume_manifest(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue: the existing one when its settings match, a fresh one for a new directory."""
    path = root / MANIFEST
    if not path.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise ShardedIndexError(f"{root} exists and is not an index directory; choose an empty or new --out")
        return dict(settings)
    old = open_sharded_index(root).manifest
    differs = [key for key, value in settings.items() if old.get(key) != value]
    if differs:
        detail = ", ".join(f"{k}: {old.get(k)!r} there, {settings[k]!r} now" for k in differs)
        raise ShardedIndexError(f"{root} holds an index built with other settings ({detail}); use another --out")
    if old.get("complete"):
        log.info("%s is already complete; checking its shards", root)
    return old


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` then fsync and rename to ``path``: a crash leaves no half-written ``path``."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def random_shard_source(dim: int, seed: int = 0, chunk: int = 65_536) -> Callable[[int, int], Encoded]:
    """``encode_shard`` for a gallery of random unit vectors (D = ``dim``), deterministic per item range.

    Items are generated in fixed ``chunk``-aligned pieces seeded by ``seed`` and the piece number,
    so any shard layout gives the same values (benchmarks and tests of galleries beyond memory).
    """

    def encode(start: int, stop: int) -> Encoded:
        out = torch.empty(stop - start, dim)  # (rows, D)
        for piece in range(start // chunk, (stop - 1) // chunk + 1):
            p0 = piece * chunk
            gen = torch.Generator().manual_seed(seed * 1_000_003 + piece)
            values = torch.nn.functional.normalize(torch.randn(chunk, dim, generator=gen), dim=-1)  # (chunk, D)
            lo, hi = max(start, p0), min(stop, p0 + chunk)
            out[lo - start : hi - start] = values[lo - p0 : hi - p0]
        return {"video": out}

    return encode


# -- many processes ------------------------------------------------------------------------------------------
def rank_shards(num_shards: int, world_size: int, rank: int) -> list[int]:
    """The contiguous run of shards rank ``rank`` searches."""
    from psbench.distributed import shard_bounds

    start, stop = shard_bounds(num_shards, world_size, rank)
    return list(range(start, stop))


def distributed_topk(
    index: ShardedIndex,
    method: RetrievalMethod,
    text: Encoded,
    k: int,
    read_rows: int = DEFAULT_READ_ROWS,
    prefilter: str = "auto",
    progress: Progress | None = None,
) -> tuple[Tensor, Tensor]:
    """:meth:`ShardedIndex.topk` with the shards split across the ranks of the process group.

    Every rank gets the merged exact top-k (``merge_topk`` of the per-rank results). A failure on any
    rank (a bad shard) is raised on every rank, naming the file. One process: plain ``topk``.
    """
    from psbench import distributed

    if not distributed.is_distributed():
        return index.topk(method, text, k, read_rows=read_rows, prefilter=prefilter, progress=progress)
    import torch.distributed as dist

    k = min(k, len(index))
    mine = rank_shards(len(index.shards), distributed.world_size(), distributed.rank())
    local: dict[str, Any] = {}
    try:
        if mine:
            local["topk"] = index.topk(method, text, k, mine, read_rows, prefilter, progress)
    except Exception as exc:  # noqa: BLE001 - every rank must reach the gather, or the others wait forever
        local["error"] = str(exc) if isinstance(exc, ShardedIndexError) else f"rank {distributed.rank()}: {exc!r}"
    parts: list[Any] = [None] * distributed.world_size()
    dist.all_gather_object(parts, local)
    for part in parts:
        if "error" in part:
            raise ShardedIndexError(part["error"])
    return engine.merge_topk([p["topk"] for p in parts if "topk" in p], k)

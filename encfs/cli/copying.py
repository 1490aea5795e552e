"""The copy engine behind ``encfs cp``: plan, then copy in one or many processes.

Each file is copied as a stream (bounded memory whatever its size) and
becomes visible at the destination only when complete: encrypted
destinations commit atomically by themselves; plaintext ones on local disk
are staged in an owner-only temp file next to the destination and renamed
(never in ``$TMPDIR``, where decrypted plaintext would outlive a killed
copy), other plaintext ones are opened with ``autocommit=False`` and
committed after the last byte.

Every destination stays inside the destination root: a source key holding
``..``, an absolute path, a drive letter, a backslash or an empty component
is refused with its own error, and the rest of the copy goes on
(docs/SECURITY.md).

Many files go to worker *processes*, not threads: AES-GCM in ``cryptography``
holds the GIL, so threads would not use a second core.  Each worker builds
its own filesystems from the secret-free :class:`~encfs.cli.util.Location`
recipes (URL, key URIs, options); no key or data key is sent to it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import posixpath
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from ..errors import ConfigurationError, EncfsError, NotRegularFileError, UnsafePathError
from ..fs import EncryptedFileSystem
from ..paths import join_inside
from ..targets import LocalSink
from .util import Location

#: Plaintext bytes moved per read/write call (a multiple of the segment size
#: for encrypted sources, so no segment is decrypted twice).
CHUNK = 4 * 1024 * 1024
#: Upper bounds of one batch handed to a worker process: big enough to amortise
#: inter-process round trips for many small files, small enough to balance.
BATCH_FILES = 64
BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CopyItem:
    src: str
    dst: str
    size: int


def _join(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}" if rel else base


def _same_storage(a: AbstractFileSystem, b: AbstractFileSystem) -> bool:
    """Whether both sides end up on the same kind of target storage."""
    ta = a.fs if isinstance(a, EncryptedFileSystem) else a
    tb = b.fs if isinstance(b, EncryptedFileSystem) else b
    return type(ta) is type(tb)


def plan(src_fs: AbstractFileSystem, src: str, dst_fs: AbstractFileSystem, dst: str, *,
         dst_is_dir_hint: bool, recursive: bool, refused: list[EncfsError] | None = None) -> list[CopyItem]:
    """The (source, destination, plaintext size) of every file to copy.

    POSIX ``cp`` semantics: an existing destination directory (or one written
    with a trailing ``/``) receives the source under its own name.

    Source names are joined below the destination with
    :func:`encfs.paths.join_inside`: a name that would land outside it
    (``data/../../x`` on S3) is refused, as is a FIFO, socket or device in a
    local tree (reading one could block forever).  With ``refused`` given,
    each refusal is appended there and the other files are still planned;
    without it the first one is raised.
    """
    def refuse(exc: EncfsError) -> None:
        if refused is None:
            raise exc
        refused.append(exc)

    into = dst_is_dir_hint or dst_fs.isdir(dst)
    if src_fs.isdir(src):
        if not recursive:
            raise ConfigurationError(f"{src} is a directory (use -r to copy it)")
        base = join_inside(dst, posixpath.basename(src.rstrip("/")), source=src) if into else dst
        inside = base.rstrip("/") == src.rstrip("/") or base.startswith(src.rstrip("/") + "/")
        if inside and _same_storage(src_fs, dst_fs):
            raise ConfigurationError(f"cannot copy {src} into itself")
        found = src_fs.find(src, detail=True)
        prefix = src.rstrip("/") + "/"
        items: list[CopyItem] = []
        for p, info in sorted(found.items()):
            kind = info.get("type")
            if kind == "directory" or (kind != "file" and info.get("islink")):
                continue  # symbolic links in a local tree are not followed (as before)
            if kind != "file":
                refuse(NotRegularFileError(f"skipped {p}: not a regular file (FIFO, socket or device)"))
                continue
            try:
                items.append(CopyItem(p, join_inside(base, p[len(prefix):], source=p), int(info.get("size") or 0)))
            except UnsafePathError as exc:
                refuse(exc)
        return items
    info = src_fs.info(src)  # FileNotFoundError passes through with the path
    if info.get("type") not in ("file", None):
        raise NotRegularFileError(f"not a regular file (FIFO, socket or device): {src}")
    target = join_inside(dst, posixpath.basename(src), source=src) if into else dst
    if _same_storage(src_fs, dst_fs) and src.rstrip("/") == target.rstrip("/"):
        raise ConfigurationError(f"source and destination are the same object: {src}")
    return [CopyItem(src, target, int(info.get("size") or 0))]


class _StagedLocalFile:
    """Plaintext to a local destination through :class:`~encfs.targets.LocalSink`:
    an owner-only (0600) temp file in the destination directory, renamed onto
    the destination when complete, removed on failure.  fsspec's local
    ``autocommit=False`` file stages in ``$TMPDIR`` instead, where decrypted
    plaintext would stay behind after a SIGKILL."""

    def __init__(self, fs: AbstractFileSystem, path: str) -> None:
        self._sink = LocalSink(fs, path, exclusive=False)

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        return len(data)

    def close(self) -> None:
        """Nothing: the data becomes visible at commit."""

    def commit(self) -> None:
        self._sink.commit()

    def discard(self) -> None:
        self._sink.discard()


def copy_file(src_fs: AbstractFileSystem, src: str, dst_fs: AbstractFileSystem, dst: str,
              progress: Callable[[int], None] = lambda n: None) -> int:
    """Stream one file; nothing appears at ``dst`` unless every byte arrived."""
    parent = posixpath.dirname(dst.rstrip("/"))
    if parent:
        dst_fs.makedirs(parent, exist_ok=True)
    if isinstance(dst_fs, LocalFileSystem):
        out: Any = _StagedLocalFile(dst_fs, dst_fs._strip_protocol(dst))
    else:
        out = dst_fs.open(dst, "wb", autocommit=False)
    total = 0
    try:
        if isinstance(src_fs, EncryptedFileSystem):
            # Segment-aligned reads straight from the authenticated reader.
            reader = src_fs.reader(src)
            step = max(1, CHUNK // reader.segment_size) * reader.segment_size
            for pos in range(0, reader.size, step):
                chunk = reader.read(pos, pos + step)
                out.write(chunk)
                total += len(chunk)
                progress(len(chunk))
        else:
            with src_fs.open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
                    total += len(chunk)
                    progress(len(chunk))
        out.close()
        out.commit()
    except BaseException:
        # Drop the partial write; close a local temp file's handle too (its
        # ``discard`` removes the file but leaves the descriptor to the GC).
        with contextlib.suppress(Exception):
            out.discard()
        with contextlib.suppress(Exception):
            handle = getattr(out, "f", None)
            if handle is not None:
                handle.close()
        raise
    return total


# -- worker processes -----------------------------------------------------------
_worker_fs: tuple[AbstractFileSystem, AbstractFileSystem] | None = None


def _worker_init(src: Location, dst: Location) -> None:
    global _worker_fs
    _worker_fs = (src.connect()[0], dst.connect()[0])


def _worker_copy(batch: list[tuple[str, str]]) -> tuple[int, int, str | None]:
    """Copy a batch; return (files done, bytes, error line or None).

    Errors come back as text: encfs exceptions do not all survive pickling
    with their message intact, and the parent only needs the line to print.
    """
    from .main import _one_line

    assert _worker_fs is not None
    src_fs, dst_fs = _worker_fs
    done = nbytes = 0
    for s, d in batch:
        try:
            nbytes += copy_file(src_fs, s, dst_fs, d)
        except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
            return done, nbytes, f"{s}: {_one_line(exc)}"
        done += 1
    return done, nbytes, None


def _batches(items: list[CopyItem], jobs: int) -> list[list[CopyItem]]:
    per = max(1, min(BATCH_FILES, -(-len(items) // (jobs * 4))))
    out: list[list[CopyItem]] = []
    cur: list[CopyItem] = []
    cur_bytes = 0
    for it in items:
        cur.append(it)
        cur_bytes += it.size
        if len(cur) >= per or cur_bytes >= BATCH_BYTES:
            out.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        out.append(cur)
    return out


def _progress_bar(total: int, progress: bool) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not progress, desc="encfs cp", dynamic_ncols=True)


def _start_method() -> str:
    """``fork`` on Linux: a forked worker starts at once, while a spawned one
    re-imports encfs, fsspec and cryptography (about a second per worker on a
    busy 2-core machine, measured: more than a small copy takes).  Forking is
    safe here: fsspec empties its instance cache and resets its event loop in
    a forked child, the data-key cache forgets its keys, and the workers are
    forked before any thread of ours (the progress bar's) exists.  Elsewhere
    (macOS, Windows) fork is unsafe or missing: spawn."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def run(items: list[CopyItem], src: Location, dst: Location, src_fs: AbstractFileSystem,
        dst_fs: AbstractFileSystem, *, jobs: int, progress: bool) -> tuple[int, int]:
    """Copy ``items``; return (files, plaintext bytes).  Raises on the first failure."""
    total = sum(it.size for it in items)
    if jobs > 1 and len(items) > 1:
        return _run_parallel(items, src, dst, jobs, total, progress)
    bar = _progress_bar(total, progress)
    try:
        nbytes = 0
        for it in items:
            nbytes += copy_file(src_fs, it.src, dst_fs, it.dst, bar.update)
        return len(items), nbytes
    except BaseException:
        bar.leave = False  # an error line follows; do not leave a half bar above it
        raise
    finally:
        bar.close()


def _run_parallel(items: list[CopyItem], src: Location, dst: Location, jobs: int, total: int,
                  progress: bool) -> tuple[int, int]:
    batches = _batches(items, jobs)
    ctx = multiprocessing.get_context(_start_method())
    files = nbytes = 0
    with cf.ProcessPoolExecutor(max_workers=min(jobs, len(batches)), mp_context=ctx,
                                initializer=_worker_init, initargs=(src, dst)) as pool:
        # Submitting starts the workers, so they exist before the bar does.
        futures = [pool.submit(_worker_copy, [(it.src, it.dst) for it in b]) for b in batches]
        bar = _progress_bar(total, progress)
        try:
            for fut in cf.as_completed(futures):
                done, n, error = fut.result()
                files += done
                nbytes += n
                bar.update(n)
                if error is not None:
                    raise EncfsError(f"copy stopped after {files} of {len(items)} files: {error}")
        except BaseException:
            bar.leave = False
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
    return files, nbytes

"""EncryptedFileSystem: the ``enc`` protocol over any fsspec filesystem.

Every method is delegated explicitly (as fsspec's DirFileSystem does): an
operation that is not written here is inherited from AbstractFileSystem,
which routes it through :meth:`_open`, :meth:`ls` or :meth:`info` — never
straight to the target, so plaintext can not bypass encryption.

Constructor arguments are all the state there is; they hold references
(key URIs, keystore path, limits), never key material, because fsspec puts
them in ``storage_options``, ``to_json()`` and pickles, and dask ships them
to workers in clear.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import os
import stat
import tempfile
from collections.abc import Mapping
from typing import Any

from fsspec import filesystem
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.utils import isfilelike

from .aio import AsyncMethods
from .chaining import nested_target_options
from .errors import (
    ConfigurationError,
    ContextMismatchError,
    IntegrityError,
    NotRegularFileError,
    UnsafePathError,
)
from .file import (
    SMALL_OBJECT,
    WHOLE_WRITE,
    EncryptedReadFile,
    EncryptedWriteFile,
    ObjectReader,
    _abandon,
    authenticate_header,
    close_with,
    read_header,
    read_whole,
    write_whole,
)
from .format import (
    HEADER_REGION,
    PATH_KEY,
    check_segment_size,
    covering_segments,
    encode_header,
    plaintext_size,
    segment_offset,
)
from .format.context import RESERVED_PREFIX, encode_context
from .format.layout import DEFAULT_SEGMENT
from .keyring import Keyring
from .paths import local_bound_path, unsafe_reason
from .readahead import SPLIT_MIN
from .targets import TEMP_MARK, Sink, TargetIO, target_io
from .urls import PREFIX as FORM_PREFIX
from .urls import TARGETS as FORM_TARGETS
from .urls import form_protocol, to_form

#: Bytes of body copied per request when re-binding an object (cp/mv).
COPY_CHUNK = 8 * 1024 * 1024
#: Refusals collected by a running ``get`` (see EncryptedFileSystem.get).
_REFUSED: contextvars.ContextVar[list[UnsafePathError] | None] = contextvars.ContextVar("encfs_refused", default=None)

#: Objects opened and read at once by ``cat_ranges`` on a concurrent target.
MAX_CONCURRENT_OBJECTS = 16


class _PendingSink:
    """A finished copy waiting for its transaction (fsspec calls
    ``commit``/``discard`` on everything in ``transaction.files``)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def __repr__(self) -> str:
        return f"<pending encfs copy to {self.sink.path!r}>"

    def commit(self) -> None:
        self.sink.commit()

    def discard(self) -> None:
        self.sink.discard()


class _PendingRemoval:
    """The source side of a ``mv`` inside a transaction: removed only when
    the transaction commits (after the copies queued before it)."""

    def __init__(self, efs: EncryptedFileSystem, path: Any, recursive: bool) -> None:
        self.efs, self.path, self.recursive = efs, path, recursive

    def __repr__(self) -> str:
        return f"<pending encfs removal of {self.path!r}>"

    def commit(self) -> None:
        self.efs.rm(self.path, recursive=self.recursive)

    def discard(self) -> None:
        """Rolled back: the source stays."""


class _KeystoreHomeToken:
    """Part of fsspec's instance-cache token: the keystore home taken from
    the environment.  Without it, an instance made under one ``ENCFS_HOME``
    would be handed out again after the variable changed, still bound to
    the old keystore.  (The token is a hash; only the path goes into it.)"""

    def __repr__(self) -> str:
        return f"ENCFS_HOME={os.environ.get('ENCFS_HOME')!r}"


class EncryptedFileSystem(AsyncMethods, ChainedFileSystem):
    """Transparent envelope encryption over a target fsspec filesystem.

    Parameters
    ----------
    fo, fs, target_protocol, target_options:
        The target, as for any chained fsspec filesystem: an instance
        (``fs=``) or a protocol and its options.  ``fo`` is the path of a
        chained URL (``enc::s3://bucket/key``) and is otherwise unused.
    key:
        Root key URI, or a list of them: each object's data key is wrapped
        under every one.  Default ``"local://default"``.
    decrypt_keys:
        Extra key URIs this filesystem may unwrap with (besides ``key``).
    context:
        Extra encryption context (str → str) bound into every header and
        sent to key services.
    segment_size:
        Plaintext bytes per authenticated segment (default 64 KiB; 32 KiB suits Parquet datasets, docs/FORMAT.md
        section 8). Readers must use the writers' value: listings compute sizes with it.
        Listings compute plaintext sizes with it, so readers should use the
        writers' value.
    keystore:
        Directory of the local keystore (default ``$ENCFS_HOME`` or ``~/.encfs``).
    providers:
        Per-scheme provider options, e.g. ``{"aws-kms": {"region_name": ...}}``.
    bind_path:
        Check that an object sits at the path it was written for (default
        True; objects are always written with their path bound).
    cache:
        Data-key cache (docs/CACHE.md): ``True`` (default limits), ``False``
        (off: one key-service call per object written or read), or a mapping
        overriding limits: ``max_age`` (seconds, 300; 0 disables reuse),
        ``max_objects`` (per data key, 10000), ``max_bytes`` (plaintext per
        data key, 2**36), ``max_entries`` (1000), ``max_key_bytes`` (65536).
    """

    protocol = "enc"
    root_marker = ""
    _strip_tokenize_options = ("fo",)
    _extra_tokenize_attributes = ("_home_token",)
    _home_token = _KeystoreHomeToken()

    def __init__(
        self,
        fo: str | None = None,
        *,
        fs: Any = None,
        target_protocol: str | None = None,
        target_options: Mapping[str, Any] | None = None,
        key: str | list[str] | None = None,
        decrypt_keys: list[str] | None = None,
        context: Mapping[str, str] | None = None,
        segment_size: int = DEFAULT_SEGMENT,
        keystore: str | None = None,
        providers: Mapping[str, Mapping[str, Any]] | None = None,
        bind_path: bool = True,
        read_block_size: int | None = None,
        cache: bool | Mapping[str, Any] = True,
        **kwargs: Any,
    ) -> None:
        # A target's options nested in ours (simplecache::enc::s3 chains):
        # used, never ignored, or requests would go to the default endpoints.
        target_options = nested_target_options(target_protocol, target_options, fs is not None, kwargs)
        super().__init__(**kwargs)
        if fs is None:
            fs = filesystem(target_protocol or "file", **target_options)
        elif target_protocol is not None:
            raise ConfigurationError("give either fs= or target_protocol=, not both")
        self.fs = fs
        # Per instance (fsspec allows it): the ``enc+<target>`` forms of this
        # target too, because DuckDB routes only paths that start with a
        # protocol the filesystem declares, and unstrip_protocol returns
        # that form (encfs/urls.py).
        self.protocol = self._declared_protocols(fs)
        #: How this target is read and written (encfs/targets/).
        self.io: TargetIO = target_io(fs)
        # fsspec's async callers (generic.rsync, zarr) await the coroutine
        # twins (aio.py) when the target is async; otherwise they call the
        # sync methods, which never touch an event loop.
        self.async_impl = self.io.concurrent
        self.asynchronous = bool(kwargs.get("asynchronous", False))
        self._bound_memo: dict[str, str] = {}
        self.segment_size = check_segment_size(segment_size)
        if read_block_size is None:
            # Sequential readahead window (file.py), and the size of each
            # overlapping request on concurrent targets (readahead.py).
            read_block_size = self.io.read_block
        self.read_block_size = max(self.segment_size, int(read_block_size))
        self.bind_path = bool(bind_path)
        self.context = dict(context or {})
        for k, v in self.context.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigurationError("context keys and values must be strings")
            if k.startswith(RESERVED_PREFIX):
                raise ConfigurationError(f"context keys starting with {RESERVED_PREFIX!r} are reserved")
        try:  # sizes and empty keys: fail here, not as a ValueError at the first write
            encode_context(self.context)
        except ValueError as exc:
            raise ConfigurationError(f"invalid encryption context: {exc}") from None
        options = {k: dict(v) for k, v in (providers or {}).items()}
        if keystore is not None:
            options.setdefault("local", {})["home"] = keystore
        self.keyring = Keyring(key, decrypt_keys=decrypt_keys, provider_options=options, cache=cache)

    def cache_stats(self) -> dict[str, Any]:
        """Data-key cache counters and key-service calls (see Keyring.stats)."""
        return self.keyring.stats()

    def __repr__(self) -> str:
        keys = [str(r) for r in self.keyring.write_refs]
        return f"EncryptedFileSystem(target={type(self.fs).__name__}, key={keys})"

    # -- paths -----------------------------------------------------------------
    @classmethod
    def _declared_protocols(cls, fs: Any) -> tuple[str, ...]:
        own = (cls.protocol,) if isinstance(cls.protocol, str) else tuple(cls.protocol)
        theirs = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        forms = [form_protocol(p) for p in theirs if p in FORM_TARGETS]
        return tuple(dict.fromkeys([*own, *forms]))

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """``enc::<url>``, ``enc+<scheme>://<rest>`` → the target URL
        (``<url>``, ``<scheme>://<rest>``); ``enc://<path>`` → ``<path>``."""
        if type(path) is str and not path.startswith("enc"):
            return path  # the common case, a plain path (every enc form starts "enc")
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("enc::"):
            path = path[len("enc::") :]
        elif path.startswith("enc://"):
            path = path[len("enc://") :]
        elif path.startswith(FORM_PREFIX) and "://" in path:
            path = path[len(FORM_PREFIX) :]
        return path

    def _target_path(self, path: str) -> str:
        """Map an enc path to the target's path.

        A trailing "/" is kept: for object stores it is what distinguishes a
        directory marker ("dir/") from an object ("dir"), and the target
        strips it itself where it does not matter.
        """
        path = self._strip_protocol(path)
        mapped = self.fs._strip_protocol(path)
        if not path.endswith("/"):
            return mapped
        # Every trailing "/" is kept, not just one: on S3 "x/" and "x//" are
        # two more objects besides "x", and the path bound into a header must
        # name the object that is really read (FORMAT.md section 4.1).
        trail = len(path) - len(path.rstrip("/"))
        if trail and mapped and path.rstrip("/"):
            mapped = mapped.rstrip("/") + "/" * trail
        return mapped

    def unstrip_protocol(self, name: str) -> str:
        # A full URL must name the target too, or reopening it (fsspec's
        # OpenFile.full_name, DuckDB's glob results) would land on the
        # default target.  The single-scheme form where the target has one
        # (DuckDB routes by scheme), else the chained form.
        if name.startswith("enc::") or any(name.startswith(f"{p}://") for p in self.protocol if p != "enc"):
            return name
        url = self.fs.unstrip_protocol(name)
        return to_form(url) or f"enc::{url}"

    def _bound_path(self, path: str) -> str:
        """The path bound into headers (FORMAT.md section 4.1): the name of
        the object the target really reads for ``path``.

        On a local disk "d/sub/../f", "d//f" and "d/./f" name the file "d/f",
        so they bind the same path (Windows: also "\\" and letter case, see
        :func:`encfs.paths.local_bound_path`).  The memory target strips
        trailing "/" itself, so "x/" is the object "x" there.  Object stores
        keep keys verbatim ("x", "x/", "x//" and "a//b" are distinct objects
        on S3), so their exact key is bound: a copy to "x/" made without
        keys does not authenticate.
        """
        memo = self._bound_memo
        bound = memo.get(path)
        if bound is None:
            # A pure function of the path, asked for on every write and read
            # of an object (twice for a read-back): remembered, bounded.
            bound = self._bound_path_of(path)
            if len(memo) >= 4096:
                memo.clear()
            memo[path] = bound
        return bound

    def _bound_path_of(self, path: str) -> str:
        bound = self._target_path(path)
        if isinstance(self.fs, LocalFileSystem):
            bound = bound.rstrip("/")
            return local_bound_path(bound) if bound else bound
        if isinstance(self.fs, MemoryFileSystem):
            return bound.rstrip("/")
        return bound

    def _context_for(self, path: str) -> dict[str, str]:
        return {**self.context, PATH_KEY: self._bound_path(path)}

    def _check_context(self, header: Any, path: str) -> None:
        """Refuse an object whose context lacks or differs in a configured
        pair (docs/SECURITY.md): one written for another tenant, or with no
        context at all.  Called once the header MAC has verified, so a
        tampered context is an IntegrityError (no oracle) and a mismatch
        reported here is what the writer really bound."""
        for k, v in self.context.items():
            have = header.context.get(k)
            if have != v:
                found = "missing" if have is None else repr(have)
                raise ContextMismatchError(
                    f"encryption context of {path} does not match this filesystem's: "
                    f"{k!r} is {found}, expected {v!r}"
                )

    def _check_regular(self, tpath: str) -> None:
        """Never open a FIFO, socket or device on a local disk: a FIFO with
        no writer blocks the read forever, a device may never end.  A path
        that does not exist is left to the target's own error."""
        if not isinstance(self.fs, LocalFileSystem):
            return
        try:
            mode = os.stat(tpath).st_mode
        except (OSError, ValueError):
            return
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise NotRegularFileError(f"not a regular file (FIFO, socket or device): {tpath}")

    # -- sizes and listings ----------------------------------------------------
    def _plain_info(self, info: dict[str, Any]) -> dict[str, Any]:
        """Turn a target listing entry into a plaintext one (no extra request)."""
        if info.get("type") != "file" or "size" not in info or info["size"] is None:
            return info
        out = dict(info)
        # The region (4096 or compact) follows from the size (FORMAT.md 3.1).
        size = plaintext_size(int(info["size"]), self.segment_size)
        out["encrypted_size"] = info["size"]
        out["size"] = size if size is not None else 0
        if size is None:
            out["encfs_valid"] = False  # too small or wrong size for an encfs object
        return out

    @staticmethod
    def _hidden(name: str) -> bool:
        return TEMP_MARK in name.rsplit("/", 1)[-1]

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        entries = self.fs.ls(self._target_path(path), detail=True, **kwargs)
        entries = [self._plain_info(e) for e in entries if not self._hidden(e["name"])]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._plain_info(self.fs.info(self._target_path(path), **kwargs))

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False, **kwargs: Any):
        found = self.fs.find(self._target_path(path), maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        out = {k: self._plain_info(v) for k, v in found.items() if not self._hidden(k)}
        return out if detail else sorted(out)

    def du(self, path: str, total: bool = True, maxdepth: int | None = None, withdirs: bool = False,
           **kwargs: Any) -> Any:
        # fsspec's du asks info() once per file; the detailed find already
        # has every size.
        sizes: dict[str, int] = {}
        if withdirs and self.isdir(path):
            info = self.info(path)
            sizes[info["name"]] = info.get("size") or 0
        found = self.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        for name, info in found.items():
            sizes[name] = info.get("size") or 0
        return sum(sizes.values()) if total else sizes

    def exists(self, path: str, **kwargs: Any) -> bool:
        return self.fs.exists(self._target_path(path), **kwargs)

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(self._target_path(path))

    def isfile(self, path: str) -> bool:
        return self.fs.isfile(self._target_path(path))

    def created(self, path: str) -> Any:
        return self.fs.created(self._target_path(path))

    def modified(self, path: str) -> Any:
        return self.fs.modified(self._target_path(path))

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.fs.mkdir(self._target_path(path), create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.fs.makedirs(self._target_path(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(self._target_path(path))

    def rm_file(self, path: str) -> None:
        self.fs.rm_file(self._target_path(path))

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        # The target knows best how to recurse (and batch deletes).
        self.fs.rm(self._target_path(path) if isinstance(path, str) else [self._target_path(p) for p in path],
                   recursive=recursive, maxdepth=maxdepth)

    def invalidate_cache(self, path: str | None = None) -> None:
        self.fs.invalidate_cache(self._target_path(path) if path else None)

    def sign(self, path: str, expiration: int = 100, **kwargs: Any) -> str:
        raise NotImplementedError("a signed URL would hand out ciphertext; read through encfs instead")

    def open(self, path: str, mode: str = "rb", block_size: Any = None, cache_options: dict | None = None,
             compression: str | None = None, **kwargs: Any):
        """fsspec's ``open``, except that closing a compression wrapper
        (``compression="gzip"``, ...) closes the encfs file under it.

        fsspec's wrappers (GzipFile, BZ2File, ...) leave the file they were
        given open, so a write through ``fs.open(p, "wb", compression=...)``
        was never committed and was discarded when collected: the data was
        lost without an error (``fsspec.open`` closes both itself).
        """
        if compression is None or "b" not in mode:
            # Text mode comes back here for its binary file.
            return super().open(path, mode, block_size=block_size, cache_options=cache_options,
                                compression=compression, **kwargs)
        from fsspec.compression import compr
        from fsspec.core import get_compression

        codec = get_compression(self._strip_protocol(path), compression)
        f = super().open(path, mode, block_size=block_size, cache_options=cache_options, **kwargs)
        if codec is None:
            return f
        try:
            wrapper = compr[codec](f, mode=mode[0])
        except BaseException:
            _abandon(f)
            raise
        return close_with(wrapper, f)

    # -- reading -----------------------------------------------------------------
    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: dict | None = None, **kwargs: Any):
        tpath = self._target_path(path)
        if mode == "rb":
            self._check_regular(tpath)
            return EncryptedReadFile(self, tpath, mode, block_size=block_size, cache_options=cache_options, **kwargs)
        if mode in ("wb", "xb"):
            return EncryptedWriteFile(self, tpath, mode, autocommit=autocommit)
        raise ValueError(
            f"encfs opens objects with modes 'rb', 'wb' or 'xb' (or their text forms), not {mode!r}: "
            "an encrypted object is sealed as a whole, so it cannot be appended to or modified in place"
        )

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        if (self.io.concurrent and start is not None and end is not None and 0 <= start < end
                and start >= SMALL_OBJECT and end - start <= SPLIT_MIN):
            # A range of a large object: fetch its segments while the opening
            # probe is on the wire (one round trip instead of two), placed as
            # for a default object; the reader uses them only if the header
            # agrees and authenticates them as usual (file.py, _fetch).
            segs = covering_segments(start, end, self.segment_size)
            lo = segment_offset(segs[0], self.segment_size, HEADER_REGION)
            hi = segment_offset(segs[-1] + 1, self.segment_size, HEADER_REGION)
            guess = (lo, hi, self.io.submit(self._target_path(path), lo, hi))
            try:
                with contextlib.closing(self.reader(path, _guess=guess)) as reader:
                    return reader.read_range(start, end)
            finally:
                guess[2].cancel()
        if start is None and end is None:
            # The whole object: a small one is authenticated and decrypted
            # straight from the opening probe (file.read_whole).
            tpath = self._target_path(path)
            self._check_regular(tpath)
            return read_whole(self, tpath)
        with contextlib.closing(self.reader(path)) as reader:  # nothing left in flight after
            return reader.read_range(start, end)

    def reader(self, path: str, _guess: Any = None) -> ObjectReader:
        """An authenticated random-access reader (public for tools and CLI)."""
        tpath = self._target_path(path)
        self._check_regular(tpath)
        return ObjectReader(self, tpath, guess=_guess)

    def header(self, path: str):
        """The parsed, unverified header of an object (one ranged read)."""
        tpath = self._target_path(path)
        self._check_regular(tpath)
        return read_header(self, tpath, self.fs.cat_file(tpath, start=0, end=HEADER_REGION))

    # -- writing -------------------------------------------------------------------
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        fmode = "xb" if mode == "create" else "wb"
        if self._intrans or kwargs:
            # Through open(), not _open(): open() is what enrols the file in a
            # running transaction.
            with self.open(path, fmode, **kwargs) as f:
                f.write(value)
            return
        # Outside a transaction open() adds nothing but its own overhead, and
        # a value in hand needs no streaming: sealed in one piece (issue 11,
        # benchmarks/bench_small_objects.py).
        tpath = self._target_path(path)
        if isinstance(value, (bytes, bytearray, memoryview)) and len(value) <= WHOLE_WRITE:
            write_whole(self, tpath, value, exclusive=fmode == "xb")
            return
        with EncryptedWriteFile(self, tpath, fmode) as f:
            f.write(value)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        if truncate or not self.exists(path):
            self.pipe_file(path, b"")
        else:
            self.fs.touch(self._target_path(path), truncate=False, **kwargs)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy an encrypted object, re-binding its header to the new path.

        The body is copied as ciphertext: only the header is rewritten (same
        object id and wrapped keys, new context, new MAC), so the key service
        is asked to unwrap once and no segment is re-encrypted.  ``mv`` is
        this copy followed by ``rm``.  Inside a transaction the copy becomes
        visible when the transaction commits.
        """
        src, dst = self._target_path(path1), self._target_path(path2)
        if self.fs.isdir(src):
            self.fs.makedirs(dst, exist_ok=True)
            return
        self._check_regular(src)
        ct_size = int(self.fs.size(src))
        # The reader's header checks (file.authenticate_header): only an
        # authentic object of this path and context is re-bound.
        # Through the target I/O layer, as the reader reads: on local disk it
        # refuses a FIFO or device swapped in after the check instead of
        # blocking on it (targets/local.py).
        head = bytes(self.io.fetch(src, 0, min(HEADER_REGION, ct_size))) if ct_size else b""
        header, keys, _size = authenticate_header(self, src, head, ct_size)
        new_context = {**header.context, PATH_KEY: self._bound_path(dst)}
        new_header = encode_header(segment_size=header.segment_size, object_id=header.object_id,
                                   context=new_context, keys=keys, wrapped_keys=header.wrapped_keys,
                                   suite=header.suite, body=ct_size - header.header_region)
        del keys
        sink = self.io.open_sink(dst, exclusive=kwargs.get("mode") == "create")
        try:
            sink.write(new_header)
            pos = header.header_region
            copy_body = getattr(sink, "copy_from", None)  # server-side copy (S3 UploadPartCopy)
            if copy_body is not None:
                copy_body(src, pos, ct_size)
                pos = ct_size
            while pos < ct_size:
                end = min(pos + COPY_CHUNK, ct_size)
                chunk = self.io.fetch(src, pos, end)
                if len(chunk) != end - pos:
                    # The source shrank under the copy: fail now, storing
                    # nothing, rather than commit a copy that cannot read.
                    raise IntegrityError(src)
                sink.write(chunk)
                del chunk
                pos = end
            if self._intrans:
                self.transaction.files.append(_PendingSink(sink))
            else:
                sink.commit()
        except BaseException:
            sink.discard()
            raise

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:
        """Move = re-binding copy, then remove the source.

        Inside a transaction the copies are deferred to its end, so the
        removal must be too: removing at once would lose the data if the
        transaction is then rolled back.
        """
        if isinstance(path1, str) and isinstance(path2, str) and self._bound_path(path1) == self._bound_path(path2):
            # Two spellings of one object ("d/./f", "memory://x"): the copy
            # would land on the source and the removal then delete it.
            return None
        if not self._intrans:
            return super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        if path1 == path2:
            return None
        self.copy(path1, path2, recursive=recursive, maxdepth=maxdepth, on_error="raise")
        self.transaction.files.append(_PendingRemoval(self, path1, recursive))
        return None

    def cat_ranges(self, paths: list[str], starts: Any, ends: Any, max_gap: Any = None,
                   on_error: str = "return", **kwargs: Any) -> list[Any]:
        """Several ranges, opening (and authenticating the header of) each
        object once rather than once per range."""
        if max_gap is not None:
            raise NotImplementedError("encfs reads whole segments already; max_gap is not supported")
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        n = len(paths)
        starts = [starts] * n if not isinstance(starts, list) else starts
        ends = [ends] * n if not isinstance(ends, list) else ends
        if len(starts) != n or len(ends) != n:
            raise ValueError("paths, starts and ends must have the same length")
        if self.io.concurrent and len(set(paths)) > 1:
            return self._concurrent_cat_ranges(paths, starts, ends, on_error)
        readers: dict[str, ObjectReader | BaseException] = {}
        out: list[Any] = []
        try:
            for path, start, end in zip(paths, starts, ends):
                try:
                    reader = readers.get(path)
                    if reader is None:
                        try:
                            reader = readers[path] = self.reader(path)
                        except Exception as exc:
                            readers[path] = exc
                            raise
                    elif isinstance(reader, BaseException):
                        raise reader
                    out.append(reader.read_range(start, end))
                except Exception as exc:
                    if on_error != "return":
                        raise
                    out.append(exc)
        finally:
            # Consecutive ranges read like a sequential reader, which keeps
            # requests in flight for its next read: there is none.
            for reader in readers.values():
                if isinstance(reader, ObjectReader):
                    reader.close()
        return out

    def get(self, rpath: Any, lpath: Any, recursive: bool = False, callback: Any = DEFAULT_CALLBACK,
            maxdepth: int | None = None, **kwargs: Any) -> None:
        """fsspec's ``get``, except that an object whose key could not be
        written inside ``lpath`` (``..``, ``.``, empty components,
        backslashes, drive letters) is refused and the others are still
        copied; the refusals are raised together at the end
        (:class:`~encfs.errors.UnsafePathError`, docs/SECURITY.md)."""
        refused: list[UnsafePathError] = []
        token = _REFUSED.set(refused)
        try:
            super().get(rpath, lpath, recursive=recursive, callback=callback, maxdepth=maxdepth, **kwargs)
        finally:
            _REFUSED.reset(token)
        if refused:
            first = refused[0]
            more = f" (and {len(refused) - 1} more refused)" if len(refused) > 1 else ""
            raise UnsafePathError(first.key, first.reason + more)

    def _check_local_name(self, rpath: str) -> None:
        """Keys of object stores are free text: one holding ``..`` or a
        backslash names a place outside any local destination it is copied
        into.  Local sources are real file names and cannot."""
        if isinstance(self.fs, LocalFileSystem):
            return
        reason = unsafe_reason(self._target_path(rpath).strip("/"))
        if reason is not None:
            raise UnsafePathError(rpath, reason)

    def cat(self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any) -> Any:
        """fsspec's ``cat``; on a concurrent target the objects are read in
        parallel (one ``cat_file`` after another otherwise)."""
        if not self.io.concurrent or kwargs:
            return super().cat(path, recursive=recursive, on_error=on_error, **kwargs)
        paths = self.expand_path(path, recursive=recursive)
        if len(paths) <= 1 and not isinstance(path, list) and paths and paths[0] == self._strip_protocol(path):
            return self.cat_file(paths[0])
        got = self._concurrent_cat_ranges(paths, [None] * len(paths), [None] * len(paths), on_error="return")
        out: dict[str, Any] = {}
        for p, value in zip(paths, got):
            if isinstance(value, Exception):
                if on_error == "raise":
                    raise value
                if on_error == "omit":
                    continue
            out[p] = value
        return out

    def _concurrent_cat_ranges(self, paths: list[str], starts: list[Any], ends: list[Any],
                               on_error: str) -> list[Any]:
        """``cat_ranges`` over many objects of a concurrent target, objects in parallel.

        Each object is opened once and its ranges read in order by one
        worker thread; different objects proceed at the same time.  The
        threads only wait: every request runs as a coroutine on the target's
        own event loop, so the requests of different objects overlap.
        """
        groups: dict[str, list[int]] = {}
        for i, path in enumerate(paths):
            groups.setdefault(path, []).append(i)
        out: list[Any] = [None] * len(paths)

        def work(path: str, indices: list[int]) -> None:
            try:
                reader = self.reader(path)
            except Exception as exc:  # noqa: BLE001 - returned per range, as fsspec's cat_ranges does
                for i in indices:
                    out[i] = exc
                return
            with contextlib.closing(reader):  # nothing left in flight after the last range
                for i in indices:
                    try:
                        out[i] = reader.read_range(starts[i], ends[i])
                    except Exception as exc:  # noqa: BLE001 - as above
                        out[i] = exc

        workers = max(1, min(MAX_CONCURRENT_OBJECTS, len(groups)))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="encfs-cat") as pool:
            for fut in [pool.submit(work, p, idx) for p, idx in groups.items()]:
                fut.result()
        if on_error != "return":
            for item in out:
                if isinstance(item, Exception):
                    raise item
        return out

    def get_file(self, rpath: str, lpath: Any, callback: Any = DEFAULT_CALLBACK, outfile: Any = None,
                 **kwargs: Any) -> None:
        """Decrypt one object into a local file, all or nothing.

        The plaintext goes to a hidden temp file that replaces ``lpath`` only
        once the whole object has authenticated, so a failed read never
        leaves a truncated plaintext file that looks complete.
        """
        if isfilelike(lpath) or outfile is not None:
            return super().get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)
        try:
            self._check_local_name(rpath)
        except UnsafePathError as exc:
            refused = _REFUSED.get()
            if refused is None:
                raise
            refused.append(exc)  # inside get(): the rest goes on, get() raises at the end
            return None
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return None
        lpath = os.fspath(lpath)
        parent = os.path.dirname(os.path.abspath(lpath))
        os.makedirs(parent, exist_ok=True)
        with self.open(rpath, "rb", **kwargs) as src:
            fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(lpath) + TEMP_MARK, dir=parent)
            try:
                with os.fdopen(fd, "wb") as dst:
                    callback.set_size(getattr(src, "size", None))
                    while data := src.read(self.blocksize):
                        dst.write(data)
                        callback.relative_update(len(data))
                os.replace(temp, lpath)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
        return None

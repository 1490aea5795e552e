"""S3 specifics (through s3fs): the object size with the first ranged GET,
overlapping ranged GETs, atomic multipart writes, create-only writes with
``If-None-Match``, and server-side copies for re-binding (cp/mv).

Imported lazily by :func:`encfs.targets.target_io` the first time an s3fs
target shows up (``import encfs`` does not import s3fs and botocore).

Why multipart: a multipart upload is invisible until
``CompleteMultipartUpload``, so an object appears whole or not at all, and
an aborted or interrupted upload leaves no object (an upload orphaned by a
killed process is invisible too; a bucket lifecycle rule
``AbortIncompleteMultipartUpload`` reclaims its parts).  Up to
:data:`IN_FLIGHT` parts upload concurrently while the writer encrypts the
next one, so memory stays at about ``(IN_FLIGHT + 1) x part size`` (40 MiB
by default) whatever the object size; a part that fails aborts the whole
upload once the others in flight have settled, so no part outlives it.

Parts are cut at segment boundaries (FORMAT.md section 5: segment i sits at
``header_region + i * (segment_size + 16)``): part 1 is the header plus
whole segments, every later part whole segments only.  The sink reads the
segment size from the header it is given, so the alignment holds however
the writer chunks its calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from s3fs import S3FileSystem

from ..errors import FormatError, IntegrityError
from ..format import HEADER_REGION, TAG_BYTES, parse_header
from .base import AsyncTargetIO
from .sinks import Sink

#: S3's smallest part (all parts but the last); also the smallest part we cut.
MIN_PART = 5 * 1024 * 1024
#: S3's largest part, and its limit on the number of parts.
MAX_PART = 5 * 1024**3
MAX_PARTS = 10_000
#: After this many parts the part size doubles, so a stream of unknown
#: length never runs into MAX_PARTS (1000 x 50 MiB, then 100 MiB parts...).
PARTS_PER_DOUBLING = 1000
#: A re-bind copies the body server-side (UploadPartCopy) when the body is
#: at least this large; smaller bodies are cheaper to download and re-upload.
SERVER_COPY_MIN = 2 * MIN_PART
#: Bytes per UploadPartCopy request.
COPY_PART = 512 * 1024 * 1024
#: Part size when the target's block size is larger (s3fs: 50 MiB): small
#: enough that several parts overlap on the wire for objects of tens of MiB.
PART_SIZE = 8 * 1024 * 1024
#: Parts uploading at once while the writer keeps encrypting.  Memory held
#: by a writer: IN_FLIGHT parts in flight plus the part being filled, i.e.
#: about (IN_FLIGHT + 1) x part size (5 x 8 MiB by default).
IN_FLIGHT = 4


class S3MultipartSink(Sink):
    """Ciphertext into S3: one PUT for small objects, else a multipart upload."""

    def __init__(self, fs: S3FileSystem, path: str, exclusive: bool, part_size: int | None = None) -> None:
        super().__init__(fs, path, exclusive)
        self.bucket, self.key, _ = fs.split_path(path)
        if not self.key:
            raise IsADirectoryError(f"cannot write an object at a bucket root: {path}")
        self.part_size = max(MIN_PART, min(MAX_PART, int(part_size or min(fs.default_block_size or PART_SIZE,
                                                                              PART_SIZE))))
        self._buf = bytearray()
        self._offset = 0  # object offset of self._buf[0]
        self._stride: int | None = None  # segment stride, once the header has been seen
        self._region = HEADER_REGION
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._pending: list[concurrent.futures.Future[Any]] = []

    def __repr__(self) -> str:
        return f"<S3MultipartSink s3://{self.bucket}/{self.key} parts={len(self._parts) + len(self._pending)}>"

    # -- async plumbing: run s3fs coroutines on its IO loop, from any thread -----------
    def _submit(self, method: str, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(self.fs._call_s3(method, **kwargs), self.fs.loop)

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, **kwargs)

    # -- writing -------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self.done:
            raise ValueError(f"write to a finished sink for {self.path}")
        self._buf += data
        if self._stride is None and self._offset == 0 and len(self._buf) >= HEADER_REGION:
            self._learn_layout(bytes(self._buf[:HEADER_REGION]))
        while True:
            cut = self._next_cut()
            if cut is None or cut > self._offset + len(self._buf):
                return
            n = cut - self._offset
            body = bytes(self._buf[:n])
            del self._buf[:n]
            self._offset = cut
            self._upload_part(body)

    def _learn_layout(self, head: bytes) -> None:
        try:
            header = parse_header(head)
        except (FormatError, IntegrityError):
            return  # not an encfs header: parts are cut anywhere (still atomic)
        self._stride = header.segment_size + TAG_BYTES
        self._region = header.header_region

    def _current_part_size(self) -> int:
        doublings = (len(self._parts) + len(self._pending)) // PARTS_PER_DOUBLING
        return min(MAX_PART, self.part_size << doublings)

    def _boundary_at_least(self, offset: int) -> int:
        """The first segment boundary (object offset) at or after ``offset``."""
        if self._stride is None:
            return offset
        k = max(0, -(-(offset - self._region) // self._stride))
        return self._region + k * self._stride

    def _next_cut(self) -> int | None:
        """Object offset where the part being filled ends: the first segment
        boundary at least one part size past the part's start (None until
        the header has been seen)."""
        if self._stride is None and self._offset == 0 and len(self._buf) < HEADER_REGION:
            return None
        return self._boundary_at_least(self._offset + self._current_part_size())

    def _upload_part(self, body: bytes) -> None:
        if self._upload_id is None:
            resp = self._call("create_multipart_upload", Bucket=self.bucket, Key=self.key)
            self._upload_id = resp["UploadId"]
        number = len(self._parts) + len(self._pending) + 1
        if number > MAX_PARTS:
            raise OSError(f"object too large for one S3 multipart upload: {self.path}")
        # Bounded concurrency: at most IN_FLIGHT parts uploading while the
        # caller encrypts the next one; a failed part stops the writer at
        # once (the caller's error path then aborts the upload).
        self._reap()
        while len(self._pending) >= IN_FLIGHT:
            concurrent.futures.wait(self._pending, return_when=concurrent.futures.FIRST_COMPLETED)
            self._reap()
        fut = self._submit("upload_part", Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                           PartNumber=number, Body=body)
        fut.part_number = number  # type: ignore[attr-defined]
        self._pending.append(fut)

    def _reap(self) -> None:
        """Record the parts that finished (in any order); raise the first failure."""
        still: list[concurrent.futures.Future[Any]] = []
        for fut in self._pending:
            if not fut.done():
                still.append(fut)
                continue
            resp = fut.result()  # raises a failed part's error
            self._parts.append({"PartNumber": fut.part_number, "ETag": resp["ETag"]})  # type: ignore[attr-defined]
        self._pending = still

    def _drain(self) -> None:
        while self._pending:
            concurrent.futures.wait(self._pending, return_when=concurrent.futures.FIRST_EXCEPTION)
            self._reap()

    # -- server-side copy (re-bind) ----------------------------------------------------
    def copy_from(self, src: str, start: int, end: int) -> None:
        """Append bytes ``[start, end)`` of object ``src`` (same S3 service).

        Large bodies are copied by S3 itself (UploadPartCopy): only enough of
        the body to make part 1 legal (>= 5 MiB with the header) is
        downloaded.  Every request is conditional on the source's ETag, so a
        source replaced mid-copy fails the copy instead of splicing two
        objects (which readers would reject anyway).
        """
        bucket, key, _ = self.fs.split_path(src)
        info = self.fs.info(src)
        etag = info.get("ETag")
        match = {"IfMatch": etag} if etag else {}
        copy_match = {"CopySourceIfMatch": etag} if etag else {}
        pos = start
        if end - start < SERVER_COPY_MIN or self._upload_id is not None or self._parts or self._offset:
            self._copy_by_download(bucket, key, pos, end, match)
            return
        # Part 1: what is buffered (the new header) plus downloaded body up
        # to a segment boundary past MIN_PART.
        first_end = min(self._boundary_at_least(MIN_PART) - (self._offset + len(self._buf)) + pos, end)
        self._copy_by_download(bucket, key, pos, first_end, match)
        pos = first_end
        if self._buf:
            body = bytes(self._buf)
            self._offset += len(body)
            self._buf.clear()
            self._upload_part(body)
        self._drain()
        futures = []
        number = len(self._parts)
        while pos < end:
            stop = min(pos + COPY_PART, end)
            if end - stop < MIN_PART:
                stop = end  # never leave a too-small non-final part
            number += 1
            fut = asyncio.run_coroutine_threadsafe(self.fs._call_s3(
                "upload_part_copy", Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                PartNumber=number, CopySource={"Bucket": bucket, "Key": key},
                CopySourceRange=f"bytes={pos}-{stop - 1}", **copy_match), self.fs.loop)
            futures.append((number, fut))
            self._offset += stop - pos
            pos = stop
        # Wait for every copy before looking at any result: a failure then
        # leads to an abort that no copy still in flight can outlive.
        concurrent.futures.wait([fut for _, fut in futures])
        for number, fut in futures:
            self._parts.append({"PartNumber": number, "ETag": fut.result()["CopyPartResult"]["ETag"]})

    def _copy_by_download(self, bucket: str, key: str, start: int, end: int, match: dict[str, str]) -> None:
        chunk = max(self.part_size, MIN_PART)
        while start < end:
            stop = min(start + chunk, end)
            resp = self._call("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}", **match)
            data = _read_body(self.fs, resp)
            if len(data) != stop - start:
                raise IntegrityError(f"{bucket}/{key}")
            self.write(data)
            start = stop

    # -- commit / discard ------------------------------------------------------------
    def commit(self) -> None:
        if self.done:
            return
        cond = {"IfNoneMatch": "*"} if self.exclusive else {}
        try:
            if self._upload_id is None:
                # Small object: one PUT is atomic already.
                self._call("put_object", Bucket=self.bucket, Key=self.key, Body=bytes(self._buf), **cond)
            else:
                if self._buf or not (self._parts or self._pending):
                    body = bytes(self._buf)
                    self._buf.clear()
                    self._upload_part(body)
                self._drain()
                parts = sorted(self._parts, key=lambda p: p["PartNumber"])
                self._call("complete_multipart_upload", Bucket=self.bucket, Key=self.key,
                           UploadId=self._upload_id, MultipartUpload={"Parts": parts}, **cond)
        except BaseException:
            self.discard()
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        self._buf = bytearray()
        self.done = True

    def discard(self) -> None:
        self._buf = bytearray()
        # Let parts in flight finish (or fail) before the abort, so none
        # lands after it and leaves a stray part behind.  Not cancelled:
        # a request the client gives up on may still be stored by S3 after
        # the abort ("might or might not succeed"; its storage then stays
        # until the upload is aborted again).  At most IN_FLIGHT parts.
        # Except on s3fs's own loop (a finalizer run there by the garbage
        # collector), where waiting for that loop would never end (nor does
        # a cancelled request's future settle before the loop runs it).
        if _on_loop(self.fs.loop):
            for fut in self._pending:
                fut.cancel()
        else:
            concurrent.futures.wait(self._pending)
        self._pending = []
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._call("abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=upload_id)
            except FileNotFoundError:
                pass  # already completed or aborted
        self.done = True


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Is the calling thread running ``loop``?"""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _read_body(fs: S3FileSystem, resp: dict[str, Any]) -> bytes:
    async def read() -> bytes:
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    return asyncio.run_coroutine_threadsafe(read(), fs.loop).result()


def _past_the_end(exc: BaseException) -> bool:
    """Is ``exc`` s3fs's translation of S3's 416 InvalidRange (a range that
    starts at or past the object's end)?"""
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") == "InvalidRange"


class S3IO(AsyncTargetIO):
    """Reads and writes of one s3fs target."""

    # A range past the end means the object is shorter than the reader was
    # told (it changed since the probe, or the server lied about its size):
    # answered as the empty answer it is, so the reader's length check
    # reports it as IntegrityError like any other short answer, not as an
    # OSError "range not satisfiable".
    def fetch(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        try:
            return super().fetch(path, start, end)
        except OSError as exc:
            if start is None or not _past_the_end(exc):
                raise
            return b""

    async def _fetch_coro(self, path: str, start: int, end: int) -> Any:
        try:
            return await super()._fetch_coro(path, start, end)
        except OSError as exc:
            if not _past_the_end(exc):
                raise
            return b""

    def probe(self, path: str, nbytes: int) -> tuple[bytes | None, int | None]:
        """One ranged GET: the first ``nbytes`` and, from its Content-Range
        (``bytes 0-N/SIZE``), the object's size: no HEAD request."""
        bucket, key, version = self.fs.split_path(path)
        if not key:
            raise IsADirectoryError(path)
        kw: dict[str, Any] = {"VersionId": version} if version else {}

        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes=0-{nbytes - 1}",
                                          **kw, **self.fs.req_kw)
            try:
                return await resp["Body"].read(), resp.get("ContentRange", "")
            finally:
                resp["Body"].close()

        try:
            data, content_range = asyncio.run_coroutine_threadsafe(get(), self.fs.loop).result()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception:  # noqa: BLE001 - 416 for an empty object: the size path re-raises what matters
            return None, None
        total = content_range.rpartition("/")[2]
        if total.isdigit():
            return data, int(total)
        return data, (len(data) if len(data) < nbytes else None)

    def open_sink(self, path: str, exclusive: bool) -> Sink:
        return S3MultipartSink(self.fs, path, exclusive)


__all__ = ["MIN_PART", "S3IO", "S3FileSystem", "S3MultipartSink"]

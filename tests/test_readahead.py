"""Reads that overlap the network (encfs/readahead.py): sequential reads
keep several ranged requests in flight, bounded; a large random read is
split; a small random read stays one request; every byte still comes from
an authenticated segment.  Over memory read as an async target
(conftest's ``prefetching``) and over S3 (moto, s3fs)."""

from __future__ import annotations

import os
import threading

import pytest

import encfs.file
from encfs import EncryptedFileSystem
from encfs.errors import IntegrityError
from encfs.format import HEADER_REGION, TAG_BYTES
from encfs.readahead import READ_AHEAD_REQUESTS

SEG = 1024
STRIDE = SEG + TAG_BYTES


class Watch:
    """Wraps a TargetIO's submit: counts requests and the most in flight."""

    def __init__(self, io) -> None:
        self.io, self.submitted, self.in_flight, self.max_in_flight = io, [], 0, 0
        self.lock = threading.Lock()
        real = io.submit

        def submit(path, start, end):
            with self.lock:
                self.submitted.append((start, end))
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fut = real(path, start, end)
            fut.add_done_callback(self._done)
            return fut

        io.submit = submit

    def _done(self, _fut) -> None:
        with self.lock:
            self.in_flight -= 1


@pytest.fixture
def efs(memfs, encfs_home, prefetching, monkeypatch):
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")
    return prefetching(EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), segment_size=SEG,
                                           skip_instance_cache=True))


def test_sequential_reads_keep_requests_in_flight_bounded(efs):
    data = os.urandom(60 * SEG + 77)
    efs.pipe_file("/s.bin", data)
    with efs.open("/s.bin", "rb") as f:
        watch = Watch(efs.io)
        out = b"".join(iter(lambda: f.read(700), b""))
    assert out == data
    assert watch.submitted, "sequential reads never used the readahead"
    assert 1 < watch.max_in_flight <= READ_AHEAD_REQUESTS
    # chunks of one read block (2 segments here), contiguous, in order, no byte fetched twice
    spans = sorted(watch.submitted)
    assert all(b - a <= 2 * STRIDE for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


def test_large_random_read_is_split_small_one_is_one_request(efs, memfs):
    data = os.urandom(40 * SEG)
    efs.pipe_file("/r.bin", data)
    reader = efs.reader("/r.bin")
    watch = Watch(efs.io)
    assert reader.read(3 * SEG + 5, 3 * SEG + 50) == data[3 * SEG + 5 : 3 * SEG + 50]
    assert watch.submitted == []  # a small random read: one plain ranged request, no readahead
    assert reader.read(10 * SEG, 30 * SEG) == data[10 * SEG : 30 * SEG]
    # split into requests of at most one read block, exactly the covering segments
    spans = sorted(watch.submitted)
    assert len(spans) > 1 and all(b - a <= 2 * STRIDE for a, b in spans)
    assert spans[0][0] == HEADER_REGION + 10 * STRIDE and spans[-1][1] == HEADER_REGION + 30 * STRIDE
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    assert watch.max_in_flight <= READ_AHEAD_REQUESTS


def test_damaged_segment_in_a_prefetched_chunk(efs, memfs):
    data = os.urandom(30 * SEG)
    efs.pipe_file("/d.bin", data)
    raw = bytearray(memfs.cat_file("/d.bin"))
    raw[HEADER_REGION + 12 * STRIDE + 9] ^= 0x40
    memfs.pipe_file("/d.bin", bytes(raw))
    with efs.open("/d.bin", "rb") as f:
        got = b""
        with pytest.raises(IntegrityError):
            while chunk := f.read(500):
                got += chunk
        # everything released before the failure is exact and stops before segment 12
        assert got == data[: len(got)] and len(got) <= 12 * SEG


def test_closing_a_reader_cancels_prefetch(efs):
    efs.pipe_file("/c.bin", os.urandom(50 * SEG))
    f = efs.open("/c.bin", "rb")
    f.read(SEG)
    f.read(SEG)  # sequential: the readahead has requests queued
    stream = f.reader._stream
    assert stream is not None and stream._queue
    f.close()
    assert not stream._queue


@pytest.fixture
def reader_streams(monkeypatch) -> list:
    """The Readahead of every ObjectReader made from here on, in order."""
    streams: list = []
    real_init = encfs.file.ObjectReader.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        streams.append(self._stream)

    monkeypatch.setattr(encfs.file.ObjectReader, "__init__", spy)
    return streams


@pytest.mark.parametrize("how", ["cat_ranges one object", "cat_ranges two objects", "cat_file"])
def test_nothing_is_left_in_flight_after_a_call_returns(efs, reader_streams, how):
    """Consecutive ranges read like a sequential reader, whose readahead
    queues requests for a next read that never comes: cat_ranges and
    cat_file close their readers, which cancels them."""
    data = os.urandom(50 * SEG)
    efs.pipe_file("/q.bin", data)
    efs.pipe_file("/q2.bin", data)
    streams = reader_streams
    cuts = [0, 3 * SEG, 6 * SEG, 9 * SEG, 12 * SEG]
    starts, ends = cuts[:-1], cuts[1:]
    if how == "cat_file":
        assert efs.cat_file("/q.bin", start=0, end=20 * SEG) == data[: 20 * SEG]
    else:
        paths = ["/q.bin"] * 4 + (["/q2.bin"] * 4 if how.endswith("two objects") else [])
        got = efs.cat_ranges(paths, starts * (len(paths) // 4), ends * (len(paths) // 4))
        assert got == [data[a:b] for a, b in zip(starts, ends)] * (len(paths) // 4)
    assert streams and all(s is not None for s in streams)
    assert all(not s._queue for s in streams), "requests were left in flight"


def test_a_failed_whole_object_cat_file_leaves_nothing_in_flight(efs, reader_streams):
    """cat_file without a range of an object larger than the probe goes to a
    reader (file.read_whole): a damaged segment fails the read while the
    readahead has requests queued past it; they are cancelled."""
    data = os.urandom(60 * SEG)
    efs.pipe_file("/w.bin", data)
    raw = bytearray(efs.fs.cat_file("/w.bin"))
    raw[HEADER_REGION + 8 * STRIDE + 5] ^= 1
    efs.fs.pipe_file("/w.bin", bytes(raw))
    streams = reader_streams
    with pytest.raises(IntegrityError):
        efs.cat_file("/w.bin")
    assert len(streams) == 1 and streams[0] is not None
    assert not streams[0]._queue, "requests were left in flight"


def test_one_reader_shared_by_threads(efs):
    data = os.urandom(80 * SEG + 3)
    efs.pipe_file("/t.bin", data)
    reader = efs.reader("/t.bin")
    errors: list[str] = []

    def run(k: int) -> None:
        pos = (k * 7 * SEG) % len(data)
        while pos < len(data):
            n = 900 + k
            if reader.read(pos, pos + n) != data[pos : pos + n]:
                errors.append(f"thread {k} at {pos}")
            pos += n

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_s3_sequential_read_overlaps_ranged_gets(moto_server, s3, encfs_home):
    """The real path: ranged GETs as coroutines on s3fs's loop, several in flight."""
    MiB = 1024 * 1024
    efs = EncryptedFileSystem(fs=s3, keystore=str(encfs_home), read_block_size=MiB, skip_instance_cache=True)
    data = os.urandom(6 * MiB + 123)
    path = f"{s3.test_bucket}/seq.bin"
    efs.pipe_file(path, data)
    moto_server.clear_log()
    with efs.open(path, "rb") as f:
        assert len([r for r in moto_server.requests("s3")]) == 1  # open: the probe only
        watch = Watch(efs.io)
        out = b"".join(iter(lambda: f.read(512 * 1024), b""))
    assert out == data
    assert 1 < watch.max_in_flight <= READ_AHEAD_REQUESTS
    gets = [r for r in moto_server.requests("s3", "GET")]
    assert all(r.range for r in gets)
    # bytes fetched: each ciphertext byte once (the probe's first bytes at most twice)
    assert sum(r.bytes_out for r in gets) <= len(data) + 200 * TAG_BYTES + 2 * encfs.file.probe_size(efs.segment_size)
    # and a random 100-byte read after open is one ranged GET
    with efs.open(path, "rb") as f:
        moto_server.clear_log()
        f.seek(3 * MiB + 17)
        assert f.read(100) == data[3 * MiB + 17 : 3 * MiB + 117]
        assert len(moto_server.requests("s3")) == 1


def test_s3_ranged_cat_file_is_one_round_trip(moto_server, s3, encfs_home):
    """cat_file(start, end) of a large object sends the range with the probe
    (two concurrent GETs, one round trip); a wrong layout guess or a range
    past the end is still read correctly."""
    MiB = 1024 * 1024
    efs = EncryptedFileSystem(fs=s3, keystore=str(encfs_home), skip_instance_cache=True)
    data = os.urandom(3 * MiB + 5)
    path = f"{s3.test_bucket}/ranged.bin"
    efs.pipe_file(path, data)
    moto_server.clear_log()
    mid = 2 * MiB + 17
    assert efs.cat_file(path, start=mid, end=mid + 100) == data[mid : mid + 100]
    gets = moto_server.requests("s3", "GET")
    assert len(gets) == 2 and {g.range.startswith("bytes=0-") for g in gets} == {True, False}
    # another reader's segment size: the guess misses, the read does not
    other = EncryptedFileSystem(fs=s3, keystore=str(encfs_home), segment_size=16 * 1024, skip_instance_cache=True)
    moto_server.clear_log()
    assert other.cat_file(path, start=mid, end=mid + 100) == data[mid : mid + 100]
    assert len(moto_server.requests("s3", "GET")) == 3
    assert efs.cat_file(path, start=len(data) + 10, end=len(data) + 20) == b""
    assert efs.cat_file(path, start=len(data) - 10, end=len(data) + 20) == data[-10:]
    # a tampered segment in the guessed range still fails
    raw = bytearray(s3.cat_file(path))
    raw[len(raw) // 2] ^= 1
    s3.pipe_file(path, bytes(raw))
    with pytest.raises(IntegrityError):
        efs.cat_file(path, start=len(data) // 2 - 4096, end=len(data) // 2 - 4000)

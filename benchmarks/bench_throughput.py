"""Sequential throughput of encfs against plain fsspec and raw AES-256-GCM.

One run measures, on the same random payload (256 MiB by default):

- write and read through ``enc::memory://`` and ``enc::file://``;
- the same through plain ``memory://`` and ``file://`` (the storage cost
  alone; ``file://`` also with an fsync, since encfs's local sink fsyncs
  before its atomic rename);
- raw AES-256-GCM from ``cryptography`` at the same segment size and with the
  same per-segment nonce (``uint64_be(index) || uint32_be(final)``), i.e. the
  cipher cost alone with no framing, headers or storage.

Writes go through ``fs.open(path, "wb")`` in 1 MiB ``write`` calls and reads
through ``fs.open(path, "rb")`` in 1 MiB ``read`` calls, as a user's copy loop
would.  Targets (issue 2 item 10, issue 4): encrypted memory write >= 0.6x
plain memory write; encrypted memory read >= 0.7x raw AES-GCM decryption (issue 11 item 7).

A segment-size sweep (``--sweep``, on by default) measures, per segment
size, encrypted write/read throughput, the ciphertext overhead, and the
bytes fetched from the target for one 4 KiB read at a random offset.

    python benchmarks/bench_throughput.py            # 256 MiB, 5 rounds
    python benchmarks/bench_throughput.py --quick    # 32 MiB, 2 rounds
"""

from __future__ import annotations

import os
import random
import struct
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KiB, MiB, Report, Target, interleaved, interleaved_wall_cpu, mbps, parser, table, temp_dir
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from encfs.format.layout import HEADER_REGION, TAG_BYTES, ciphertext_size
from encfs.fs import EncryptedFileSystem

CHUNK = 1 * MiB
_NONCE = struct.Struct(">QI")
SWEEP_SIZES = [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB]


class CountingMemoryFS(MemoryFileSystem):
    """A private in-memory target that counts the bytes encfs asks it for."""

    protocol = "countingmemory"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, global_store=False, **kwargs)  # type: ignore[arg-type]
        self.fetched = 0
        self.requests = 0

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: object) -> bytes:
        data = super().cat_file(path, start=start, end=end, **kwargs)
        self.fetched += len(data)
        self.requests += 1
        return data


def private_memory() -> MemoryFileSystem:
    # An independent store per filesystem, so cases never see each other's
    # objects and deleting one object frees its memory.
    return MemoryFileSystem(global_store=False, skip_instance_cache=True)


def enc_over(target: object, keystore: str, segment_size: int = 64 * KiB) -> EncryptedFileSystem:
    return EncryptedFileSystem(fs=target, key="local://default", keystore=keystore,
                               segment_size=segment_size, skip_instance_cache=True)


def write_stream(fs: object, path: str, payload: memoryview) -> None:
    with fs.open(path, "wb") as f:  # type: ignore[attr-defined]
        for pos in range(0, len(payload), CHUNK):
            f.write(payload[pos : pos + CHUNK])


def read_stream(fs: object, path: str) -> int:
    n = 0
    with fs.open(path, "rb") as f:  # type: ignore[attr-defined]
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                return n
            n += len(chunk)


def seal_all(aead: AESGCM, payload: memoryview, seg: int) -> list[bytes]:
    """Every sealed segment of ``payload`` (to build the decryption input)."""
    nseg = max(1, -(-len(payload) // seg))
    last = nseg - 1
    return [aead.encrypt(_NONCE.pack(i, i == last), payload[i * seg : (i + 1) * seg], None) for i in range(nseg)]


def raw_encrypt(aead: AESGCM, payload: memoryview, seg: int) -> int:
    """The cipher cost alone: seal every segment and drop it.  (Keeping all
    ciphertexts would add page faults for fresh memory, which is storage cost,
    not cipher cost, and would flatter encfs.)"""
    nseg = max(1, -(-len(payload) // seg))
    last = nseg - 1
    n = 0
    for i in range(nseg):
        n += len(aead.encrypt(_NONCE.pack(i, i == last), payload[i * seg : (i + 1) * seg], None))
    return n


def raw_decrypt(aead: AESGCM, blob: memoryview, seg: int) -> int:
    """Open every segment of a contiguous ciphertext blob (as a reader would)."""
    stride = seg + TAG_BYTES
    nseg = max(1, -(-len(blob) // stride))
    last = nseg - 1
    n = 0
    for i in range(nseg):
        n += len(aead.decrypt(_NONCE.pack(i, i == last), blob[i * stride : (i + 1) * stride], None))
    return n


def main_comparison(size: int, rounds: int, keystore: str, workdir: str, report: Report) -> None:
    payload = memoryview(os.urandom(size))
    seg = 64 * KiB
    plain_mem, enc_mem_target = private_memory(), private_memory()
    enc_mem = enc_over(enc_mem_target, keystore, seg)
    local = LocalFileSystem()
    enc_file = enc_over(local, keystore, seg)
    aead = AESGCM(AESGCM.generate_key(256))
    pfile, pfile_sync, efile = (os.path.join(workdir, n) for n in ("plain.bin", "plain-sync.bin", "enc.bin"))

    def plain_file_fsync() -> None:
        write_stream(local, pfile_sync, payload)
        fd = os.open(pfile_sync, os.O_RDONLY)
        try:
            os.fsync(fd)  # what encfs's LocalSink does before its rename
        finally:
            os.close(fd)

    def rm(fs: object, p: str) -> Callable[[], None]:
        def _rm() -> None:
            if fs.exists(p):  # type: ignore[attr-defined]
                fs.rm_file(p)  # type: ignore[attr-defined]
        return _rm

    writes: dict[str, Callable[[], object]] = {
        "plain memory://": lambda: write_stream(plain_mem, "/p", payload),
        "enc::memory://": lambda: write_stream(enc_mem, "/e", payload),
        "raw AES-GCM encrypt": lambda: raw_encrypt(aead, payload, seg),
        "plain file://": lambda: write_stream(local, pfile, payload),
        "plain file:// + fsync": plain_file_fsync,
        "enc::file://": lambda: write_stream(enc_file, efile, payload),
    }
    setup = {"plain memory://": rm(plain_mem, "/p"), "enc::memory://": rm(enc_mem_target, "/e"),
             "plain file://": rm(local, pfile), "plain file:// + fsync": rm(local, pfile_sync),
             "enc::file://": rm(local, efile)}
    print(f"writes: {size // MiB} MiB x {rounds} rounds, interleaved ...", flush=True)
    wt, wc = interleaved_wall_cpu(writes, rounds, setup)
    # The writes of the last round stay in place for the reads.
    raw_blob = memoryview(b"".join(seal_all(aead, payload, seg)))
    reads: dict[str, Callable[[], object]] = {
        "plain memory://": lambda: read_stream(plain_mem, "/p"),
        "enc::memory://": lambda: read_stream(enc_mem, "/e"),
        "raw AES-GCM decrypt": lambda: raw_decrypt(aead, raw_blob, seg),
        "plain file://": lambda: read_stream(local, pfile),
        "enc::file://": lambda: read_stream(enc_file, efile),
    }
    assert enc_mem.cat_file("/e", start=size - 10) == bytes(payload[-10:])  # sanity: it really round-trips
    print(f"reads: {size // MiB} MiB x {rounds} rounds, interleaved ...", flush=True)
    rt, rc = interleaved_wall_cpu(reads, rounds)
    for p in (pfile, pfile_sync, efile):
        if os.path.exists(p):
            os.unlink(p)

    base_w, base_r = wt["plain memory://"], rt["raw AES-GCM decrypt"]
    rows = []
    for name, t in wt.items():
        rows.append({"op": "write", "case": name, "MiB/s": mbps(size, t), "vs plain memory write": base_w / t,
                     "vs plain memory write (CPU time)": wc["plain memory://"] / wc[name],
                     "vs raw AES-GCM": wt["raw AES-GCM encrypt"] / t})
    for name, t in rt.items():
        rows.append({"op": "read", "case": name, "MiB/s": mbps(size, t), "vs raw AES-GCM": base_r / t,
                     "vs raw AES-GCM (CPU time)": rc["raw AES-GCM decrypt"] / rc[name],
                     "vs plain memory read": rt["plain memory://"] / t})
    report.rows.extend(rows)
    print(table(["op", "case", "MiB/s", "ratio (wall)", "ratio (CPU time)"],
                [[r["op"], r["case"], r["MiB/s"],
                  f"{r.get('vs plain memory write', r.get('vs raw AES-GCM')):.2f}x",
                  f"{r.get('vs plain memory write (CPU time)', r.get('vs raw AES-GCM (CPU time)')):.2f}x"]
                 for r in rows]))
    print("  (write ratios vs plain memory:// write; read ratios vs raw AES-GCM decrypt)")
    # The targets compare the cost of encfs's code with the baselines', so
    # they use CPU time: wall time on this shared 2-core machine also counts
    # the time spent waiting for a core.  Wall-time ratios are in the table.
    report.targets.append(Target("enc::memory:// write / plain memory:// write (CPU time)",
                                 wc["plain memory://"] / wc["enc::memory://"], ">=", 0.6))
    report.targets.append(Target("enc::memory:// read / raw AES-GCM decrypt (CPU time)",
                                 rc["raw AES-GCM decrypt"] / rc["enc::memory://"], ">=", 0.7))
    report.notes.append(f"wall-time ratios: write {base_w / wt['enc::memory://']:.2f}x, "
                        f"read {base_r / rt['enc::memory://']:.2f}x")
    report.params["enc_file_write_vs_plain_file_fsync"] = wt["plain file:// + fsync"] / wt["enc::file://"]
    report.params["enc_file_read_vs_plain_file_read"] = rt["plain file://"] / rt["enc::file://"]


def _rm_if_exists(fs: MemoryFileSystem, path: str) -> None:
    if fs.exists(path):
        fs.rm_file(path)


def sweep(size: int, rounds: int, keystore: str, report: Report, random_reads: int) -> None:
    payload = memoryview(os.urandom(size))
    rng = random.Random(1)
    out = []
    for seg in SWEEP_SIZES:
        target = CountingMemoryFS(skip_instance_cache=True)
        efs = enc_over(target, keystore, seg)
        aead = AESGCM(AESGCM.generate_key(256))

        # partial() binds this iteration's objects explicitly.
        rm = partial(_rm_if_exists, target, "/s")
        wt = interleaved({"enc": partial(write_stream, efs, "/s", payload),
                          "raw": partial(raw_encrypt, aead, payload, seg)}, rounds, {"enc": rm})
        raw_blob = memoryview(b"".join(seal_all(aead, payload, seg)))
        rt = interleaved({"enc": partial(read_stream, efs, "/s"),
                          "raw": partial(raw_decrypt, aead, raw_blob, seg)}, rounds)
        ct = target.size("/s")
        assert ct == ciphertext_size(size, seg)
        # One 4 KiB read at a random offset through a freshly opened reader:
        # bytes of the read itself (the covering segments), and of opening
        # (header region + final segment, paid once per open object).
        read_bytes = open_bytes = 0
        t_read = 0.0
        for _ in range(random_reads):
            off = rng.randrange(0, size - 4 * KiB)
            target.fetched = 0
            t0 = time.perf_counter()
            reader = efs.reader("/s")
            opened = target.fetched
            data = reader.read(off, off + 4 * KiB)
            t_read += time.perf_counter() - t0
            assert data == payload[off : off + 4 * KiB]
            open_bytes += opened
            read_bytes += target.fetched - opened
        row = {
            "segment": f"{seg // KiB} KiB" if seg < MiB else f"{seg // MiB} MiB",
            "write MiB/s": mbps(size, wt["enc"]), "write vs raw": wt["raw"] / wt["enc"],
            "read MiB/s": mbps(size, rt["enc"]), "read vs raw": rt["raw"] / rt["enc"],
            "overhead %": 100.0 * (ct - size) / size,
            "tag overhead %": 100.0 * (ct - size - HEADER_REGION) / size,
            "4 KiB read: bytes fetched": read_bytes / random_reads,
            "open: bytes fetched": open_bytes / random_reads,
            "open+4 KiB read ms": 1000 * t_read / random_reads,
        }
        out.append(row)
        print(f"  segment {row['segment']:>7}: write {row['write MiB/s']:.0f} MiB/s, read {row['read MiB/s']:.0f} MiB/s, "
              f"overhead {row['overhead %']:.3f}%, 4 KiB read fetches {row['4 KiB read: bytes fetched']:.0f} B", flush=True)
    report.params["sweep_payload_MiB"] = size // MiB
    report.params["sweep"] = out


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=None, help="payload size (default 256, quick 32)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 5, quick 2)")
    p.add_argument("--no-sweep", action="store_true", help="skip the segment-size sweep")
    args = p.parse_args(argv)
    size = (args.size_mib or (32 if args.quick else 256)) * MiB
    rounds = args.rounds or (2 if args.quick else 5)
    report = Report("throughput", params={"size_MiB": size // MiB, "rounds": rounds, "segment": "64 KiB",
                                          "io_chunk": "1 MiB"})
    with temp_dir() as ks, temp_dir() as work:
        main_comparison(size, rounds, ks, work, report)
        if not args.no_sweep:
            ssize = min(size, 64 * MiB)
            print(f"segment-size sweep: {ssize // MiB} MiB through enc::memory://, {rounds} rounds ...", flush=True)
            sweep(ssize, rounds, ks, report, random_reads=20 if args.quick else 100)
    return report.finish(args)


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers for the encfs benchmarks.

The machine these run on is small and shared (2 cores, other jobs running),
so absolute numbers move a lot between runs.  Every benchmark therefore
reports RATIOS against baselines measured in the same process, and runs the
cases interleaved (A B A B ...) keeping the best time of each: a burst of
noise then hurts one repetition of every case instead of all repetitions of
one case.

Each script can write its results as JSON (``--json PATH``); run_all.py
collects those files into RESULTS.md and the plot.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1024 * 1024
KiB = 1024

# Benchmarks import encfs from the working tree, installed or not.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Target:
    """One target of the issues: ``value op threshold`` (a ratio or a count)."""

    name: str
    value: float
    op: str  # ">=" or "<="
    threshold: float
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold


@dataclass
class Report:
    """What one benchmark script measured."""

    bench: str
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for t, obj in zip(d["targets"], self.targets):
            t["met"] = obj.met
        d["machine"] = machine()
        d["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        return d

    def print_targets(self) -> None:
        for t in self.targets:
            verdict = "MET" if t.met else "MISSED"
            print(f"  target {t.name}: {t.value:.3g}{t.unit} {t.op} {t.threshold:g}{t.unit}  -> {verdict}")
        for n in self.notes:
            print(f"  note: {n}")

    def save(self, path: str | None) -> None:
        if path:
            Path(path).write_text(json.dumps(self.to_json(), indent=2))

    def finish(self, args: argparse.Namespace) -> int:
        """Common end of every benchmark's main(): record the mode, print the
        verdicts, write the JSON if asked; the exit status."""
        self.params["quick"] = bool(args.quick)
        self.print_targets()
        self.save(args.json)
        return 0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions (development)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return p


def interleaved(cases: dict[str, Callable[[], Any]], rounds: int,
                setup: dict[str, Callable[[], Any]] | None = None) -> dict[str, float]:
    """Best wall time of each case over ``rounds``, the cases run in turn.

    ``setup[name]`` (optional) runs untimed before each timed run, e.g. to
    delete the previous round's output so every write starts from nothing.
    """
    return interleaved_wall_cpu(cases, rounds, setup)[0]


def interleaved_wall_cpu(cases: dict[str, Callable[[], Any]], rounds: int,
                         setup: dict[str, Callable[[], Any]] | None = None
                         ) -> tuple[dict[str, float], dict[str, float]]:
    """As :func:`interleaved`, returning best wall times and best CPU times.

    CPU time (user + system of this process) leaves out the time the process
    waits for a core, which on a shared 2-core machine is most of the noise.
    It suits single-threaded, CPU-bound cases (memory targets, ciphers); it
    does not suit cases that wait for a disk.
    """
    wall = {name: float("inf") for name in cases}
    cpu = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            if setup and name in setup:
                setup[name]()
            gc.collect()
            gc.disable()  # a collection inside a timed run is noise, not cost
            try:
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
            finally:
                gc.enable()
            wall[name] = min(wall[name], dt)
            cpu[name] = min(cpu[name], dc)
    return wall, cpu


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds if seconds > 0 else float("inf")


@contextlib.contextmanager
def temp_dir(prefix: str = "encfs-bench-") -> Iterator[str]:
    """A scratch directory on local disk, removed afterwards."""
    base = os.environ.get("ENCFS_BENCH_TMP") or None
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as d:
        yield d


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)

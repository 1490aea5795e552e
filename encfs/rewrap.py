"""Rewrap: put objects' data keys under the current root-key version, or
under other root keys, without re-encrypting their bodies.

ENCF v1 keeps the wrapped data keys after the header MAC (docs/FORMAT.md),
so a rewrap unwraps the data key once, wraps it under the target keys and
replaces only the wrapped-key section (:func:`encfs.format.replace_wrapped_keys`);
the authenticated header part, the MAC and every body byte stay as they are.
A compact (v1.1) object whose new wrapped keys do not fit its region is
rewritten whole instead, authenticated first (FORMAT.md section 4.2).

Safety (docs/KEYS.md):

- each object is rewritten atomically through :func:`encfs.sinks.open_sink`
  (temp file + rename on local disk, one put on memory, temp sibling + move
  elsewhere): a crash leaves the old or the new object, never a mix;
- before committing, the header region is read again: if another writer
  replaced the object meanwhile (new object id, new header) the rewrap of
  that object is abandoned and reported, never committed over new data;
- idempotent: an object whose entries already name exactly the target keys
  at their current versions is left untouched, so an interrupted run is
  simply run again.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import constant_time

from .errors import EncfsError, FormatError, HeaderTooLargeError, IntegrityError, NoUsableKeyError
from .format import (
    HEADER_REGION,
    PATH_KEY,
    Header,
    ObjectKeys,
    WrappedKey,
    parse_header,
    reframe_object,
    replace_wrapped_keys,
)
from .format.header import FIXED_BYTES, MAGIC
from .keyring import service_context
from .providers import KeyRef
from .sinks import TEMP_MARK, open_sink

if TYPE_CHECKING:
    from .audit import AuditLog
    from .fs import EncryptedFileSystem

#: Body bytes copied per request.
COPY_CHUNK = 8 * 1024 * 1024

REWRAPPED, UP_TO_DATE, WOULD_REWRAP, SKIPPED, FAILED = "rewrapped", "up-to-date", "would-rewrap", "skipped", "failed"


@dataclass
class RewrapResult:
    path: str
    status: str
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RewrapReport:
    results: list[RewrapResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> list[RewrapResult]:
        return [r for r in self.results if r.status == FAILED]

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in (REWRAPPED, WOULD_REWRAP, UP_TO_DATE, SKIPPED, FAILED) if self.count(s)]
        return ", ".join(parts) if parts else "no objects"


def _entry_name(w: WrappedKey) -> str:
    return f"{w.provider}://{w.key_id}" + (f"#v{w.version}" if w.version else "")


def _dedup(refs: Iterable[KeyRef]) -> list[KeyRef]:
    out: list[KeyRef] = []
    for r in refs:
        if r not in out:
            out.append(r)
    return out


class Rewrapper:
    """Rewraps objects of one encrypted filesystem (thread-safe)."""

    def __init__(
        self,
        efs: EncryptedFileSystem,
        *,
        to: Sequence[str] | None = None,
        dry_run: bool = False,
        audit_log: AuditLog | None = None,
    ) -> None:
        self.efs = efs
        self.to_refs = [KeyRef.parse(k) for k in to] if to else None
        self.dry_run = dry_run
        self._targets: dict[KeyRef, tuple[str, str, str] | None] = {}
        self._lock = threading.Lock()
        if audit_log is None:
            from .audit import get_log

            first = (self.to_refs or efs.keyring.write_refs)[0]
            audit_log = getattr(efs.keyring.provider(first.scheme), "audit_log", None) or get_log()
        self.audit_log = audit_log

    # -- target keys -------------------------------------------------------------
    def _target(self, ref: KeyRef) -> tuple[str, str, str] | None:
        """(provider, key id, current version) of ``ref``, asked once per run;
        None when the provider cannot tell (then the post-wrap check decides)."""
        with self._lock:
            if ref in self._targets:
                return self._targets[ref]
        try:
            info = self.efs.keyring.provider(ref.scheme).describe(ref)
            target = (ref.scheme, info.key_id, str(info.current_version)) if info.current_version else None
        except EncfsError:
            target = None
        with self._lock:
            self._targets[ref] = target
        return target

    def _split(self, header: Header) -> tuple[list[WrappedKey], list[WrappedKey]]:
        """(entries this filesystem may use, entries it may not).

        Rewrap obeys the read allow-list (docs/SECURITY.md): an entry of a
        key nobody configured is never sent to its service, not even to
        describe the key; in "current version" mode it is kept verbatim."""
        if self.to_refs is not None:
            return list(header.wrapped_keys), []
        usable, other = [], []
        for w in header.wrapped_keys:
            (usable if self.efs.keyring.allows(w) else other).append(w)
        return usable, other

    def _refs_for(self, usable: list[WrappedKey]) -> list[KeyRef]:
        if self.to_refs is not None:
            return self.to_refs
        # "Current version" mode: the same (allowed) root keys the object uses.
        return _dedup(KeyRef(w.provider, w.key_id) for w in usable)

    # -- one object ----------------------------------------------------------------
    def _unwrap(self, header: Header, path: str) -> tuple[bytes, ObjectKeys]:
        # Only keys on this filesystem's allow-list: re-wrapping vouches for
        # the object, and an object forged under a key the attacker controls
        # must not be blessed (nor that key's service contacted).
        return self.efs.keyring.unwrap(header, path)

    def rewrap_object(self, tpath: str) -> RewrapResult:
        """Rewrap one object given by its target path."""
        target = self.efs.fs
        try:
            # All of a compact (v1.1) object, or the 4096-byte v1.0 region.
            region = target.cat_file(tpath, start=0, end=HEADER_REGION)
            if len(region) < FIXED_BYTES and not MAGIC.startswith(region[:4] or b"-"):
                raise FormatError(f"not an encfs object (too short to hold a header) at {tpath}")
            header = parse_header(region, tpath)
        except FormatError as exc:
            return RewrapResult(tpath, SKIPPED, error=str(exc))
        except (EncfsError, OSError) as exc:
            return RewrapResult(tpath, FAILED, error=_text(exc))
        before = [_entry_name(w) for w in header.wrapped_keys]
        try:
            usable, kept = self._split(header)
        except (EncfsError, OSError) as exc:
            return RewrapResult(tpath, FAILED, before, error=_text(exc))
        if not usable:
            return RewrapResult(tpath, FAILED, before, error=_text(NoUsableKeyError(
                f"no root key this filesystem may use wraps {tpath}", operation="rewrap")))
        refs = self._refs_for(usable)
        existing = [(w.provider, w.key_id, w.version) for w in usable]
        wanted = [self._target(r) for r in refs]
        if all(wanted) and wanted == existing and (self.to_refs is not None or header.wrapped_keys[:len(usable)] == usable):
            return RewrapResult(tpath, UP_TO_DATE, before, before)
        if self.dry_run:
            after = [f"{t[0]}://{t[1]}#v{t[2]}" if t else str(r) for t, r in zip(wanted, refs)]
            return RewrapResult(tpath, WOULD_REWRAP, before, after + [_entry_name(w) for w in kept])
        try:
            result = self._rewrite(tpath, region, header, refs, before, usable, kept)
        except (EncfsError, OSError) as exc:
            result = RewrapResult(tpath, FAILED, before, error=_text(exc))
        if result.status != UP_TO_DATE and self.audit_log is not None:
            self.audit_log.append(
                "rewrap", key=result.after[0].split("#")[0] if result.after else None, path=tpath,
                outcome="success" if result.status == REWRAPPED else "failure", error=result.error,
                keys=before, to=",".join(result.after) or None,
            )
        return result

    def _check_entries(self, entries: list[WrappedKey], header: Header, dek: bytes, tpath: str) -> None:
        """In "current version" mode the root keys to wrap under come from the
        wrapped-key section, which the header MAC does not cover: anyone who
        can write to the store could append an entry naming a key they can
        decrypt with, and a rewrap would hand them the data key.  So every
        allowed entry must unwrap to this object's data key before its key
        is used (entries of other keys are never contacted: kept verbatim)."""
        keyring = self.efs.keyring
        ctx = service_context(header.context)
        for entry in entries:
            try:
                got = keyring._unwrap(keyring.provider(entry.provider), entry, ctx)
            except IntegrityError:
                raise IntegrityError(tpath) from None
            if not constant_time.bytes_eq(got, dek):
                raise IntegrityError(tpath)

    def _rewrite(self, tpath: str, region: bytes, header: Header, refs: list[KeyRef], before: list[str],
                 usable: list[WrappedKey], kept: list[WrappedKey]) -> RewrapResult:
        target = self.efs.fs
        size = int(target.size(tpath))
        dek, keys = self._unwrap(header, tpath)
        try:
            header.verify(keys, tpath)  # never re-bless a tampered header
            if self.efs.bind_path and header.context.get(PATH_KEY) != self.efs._bound_path(tpath):
                raise IntegrityError(tpath)
            self.efs._check_context(header, tpath)
            if self.to_refs is None:
                self._check_entries(usable, header, dek, tpath)
            new = self.efs.keyring.rewrap(dek, header.context, refs) + kept
            after = [_entry_name(w) for w in new]
            if [(w.provider, w.key_id, w.version) for w in new] == [(w.provider, w.key_id, w.version)
                                                                    for w in header.wrapped_keys]:
                return RewrapResult(tpath, UP_TO_DATE, before, after)
            try:
                new_region = replace_wrapped_keys(region, header, new)
                pos = header.header_region
            except HeaderTooLargeError:
                if header.header_region == HEADER_REGION:
                    raise
                # A compact object whose new entries outgrow its region
                # (FORMAT.md section 4.2): rewritten whole, authenticated
                # first, in the region its new header needs.  It is small
                # (under 4112 bytes), so one read holds all of it.
                whole = target.cat_file(tpath)
                if len(whole) != size:
                    raise EncfsError(f"{tpath} changed during rewrap (size); run rewrap again") from None
                new_region = reframe_object(whole, header, keys, new, tpath)
                pos = size
        finally:
            del dek, keys
        sink = open_sink(target, tpath)
        try:
            sink.write(new_region)
            while pos < size:
                end = min(pos + COPY_CHUNK, size)
                chunk = target.cat_file(tpath, start=pos, end=end)
                if len(chunk) != end - pos:
                    raise EncfsError(f"{tpath} changed during rewrap (size); run rewrap again")
                sink.write(chunk)
                pos = end
            # A concurrent writer replaces the whole object (new object id,
            # new header): abandon rather than splice our header onto it.
            if target.cat_file(tpath, start=0, end=HEADER_REGION) != region or int(target.size(tpath)) != size:
                raise EncfsError(f"{tpath} changed during rewrap; run rewrap again")
            sink.commit()
        except BaseException:
            sink.discard()
            raise
        return RewrapResult(tpath, REWRAPPED, before, after)


def _text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def list_objects(efs: EncryptedFileSystem, paths: Sequence[str], *, recursive: bool = True) -> list[str]:
    """Target paths of the objects under ``paths`` (files as given,
    directories expanded when ``recursive``), without encfs temp files."""
    out: list[str] = []
    seen: set[str] = set()
    for path in paths:
        tpath = efs._target_path(path)
        if efs.fs.isdir(tpath):
            if not recursive:
                raise IsADirectoryError(f"{path} is a directory (rewrap directories recursively)")
            found = sorted(efs.fs.find(tpath))
        elif efs.fs.exists(tpath):
            found = [tpath]
        else:
            raise FileNotFoundError(path)
        for p in found:
            if TEMP_MARK not in p.rsplit("/", 1)[-1] and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def rewrap(
    efs: EncryptedFileSystem,
    paths: str | Sequence[str],
    *,
    to: Sequence[str] | None = None,
    recursive: bool = True,
    dry_run: bool = False,
    jobs: int = 8,
    progress: bool = False,
    audit_log: AuditLog | None = None,
) -> RewrapReport:
    """Rewrap every object under ``paths``.

    ``to``: root key URIs to wrap under (replacing the current entries);
    default: each object's own root keys at their current versions.
    """
    if isinstance(paths, str):
        paths = [paths]
    objects = list_objects(efs, paths, recursive=recursive)
    worker = Rewrapper(efs, to=to, dry_run=dry_run, audit_log=audit_log)
    report = RewrapReport()
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(objects), unit="obj", file=sys.stderr, desc="rewrap", disable=None)
    try:
        with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
            for result in pool.map(worker.rewrap_object, objects):
                report.results.append(result)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return report


__all__ = ["RewrapReport", "RewrapResult", "Rewrapper", "list_objects", "rewrap"]

"""Shared helpers of the file commands: from a path argument to a filesystem.

The rule every command follows: a plain path or URL (``./data``,
``s3://bucket/key``) names plaintext, ``enc::<url>`` (or ``enc+<scheme>://...``
for ``<scheme>://...``) names encrypted objects stored at ``<url>``.  Commands that only make sense on encrypted objects
(``cat``, ``ls``, ``info``, ``verify``) treat a plain path as ``enc::<path>``.

A :class:`Location` is the picklable recipe for a filesystem: the URL plus
secret-free options (key URIs, keystore directory, target options).  Worker
processes of ``encfs cp --jobs`` rebuild their filesystems from it, so no key
material ever crosses a process boundary.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from ..errors import ConfigurationError
from ..urls import target_url

ENC_PREFIX = "enc::"
#: Key-service schemes whose ``-o SCHEME.NAME=VALUE`` options become the enc
#: layer's ``providers`` (as ``encfs keys -o aws-kms.region_name=...`` takes them).
PROVIDER_SCHEMES = ("aws-kms", "pkcs11")
#: Option names the ``enc`` layer accepts from ``-o enc.NAME=VALUE``.  Keys are
#: given with --key, the keystore with --keystore, so they are not listed.
ENC_OPTIONS = frozenset({"decrypt_keys", "context", "segment_size", "providers", "bind_path", "read_block_size",
                         "cache"})

F = TypeVar("F", bound=Callable[..., Any])


def is_encrypted_url(url: str) -> bool:
    """``enc::<url>`` or the single-scheme ``enc+<scheme>://...`` (encfs/urls.py)."""
    return url.startswith(ENC_PREFIX) or target_url(url) is not None


def parse_options(pairs: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["s3.endpoint_url=http://...", "enc.segment_size=1048576"]`` →
    ``{"s3": {"endpoint_url": ...}, "enc": {"segment_size": 1048576}}``.

    Values are read as JSON when they parse (numbers, booleans, objects),
    otherwise kept as strings.
    """
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        proto, dot, opt = name.partition(".")
        if not sep or not dot or not proto or not opt:
            raise click.BadParameter(f"{pair!r} is not PROTOCOL.NAME=VALUE", param_hint="'-o'")
        if proto == "enc" and opt not in ENC_OPTIONS:
            raise click.BadParameter(
                f"unknown enc option {opt!r} (known: {', '.join(sorted(ENC_OPTIONS))}; keys go in --key)",
                param_hint="'-o'",
            )
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(proto, {})[opt] = value
    return out


@dataclass(frozen=True)
class Location:
    """A path argument resolved to "plaintext or encrypted" plus its options."""

    url: str
    encrypted: bool
    keys: tuple[str, ...] = ()
    keystore: str | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def dir_hint(self) -> bool:
        """The argument ended with ``/``: it names a directory to copy into."""
        return self.url.endswith("/")

    def connect(self) -> tuple[AbstractFileSystem, str]:
        """Build (or reuse) the filesystem and return it with the path on it."""
        if not self.encrypted:
            proto = self.url.split("://", 1)[0] if "://" in self.url else "file"
            return url_to_fs(self.url, **self.options.get(proto, {}))
        inner = target_url(self.url) or (self.url[len(ENC_PREFIX) :] if is_encrypted_url(self.url) else self.url)
        if "://" not in inner:
            # A bare path: fsspec would read a single word in a chain
            # ("enc::data") as a protocol name, so make it an explicit URL.
            trail = "/" if inner.endswith("/") else ""
            inner = "file://" + os.path.abspath(os.path.expanduser(inner)) + trail
        proto = inner.split("://", 1)[0]
        enc_kwargs: dict[str, Any] = dict(self.options.get("enc", {}))
        for scheme in PROVIDER_SCHEMES:
            if scheme in self.options:
                providers = dict(enc_kwargs.get("providers") or {})
                providers[scheme] = {**providers.get(scheme, {}), **self.options[scheme]}
                enc_kwargs["providers"] = providers
        if self.keys:
            enc_kwargs["key"] = list(self.keys)
        if self.keystore:
            enc_kwargs["keystore"] = self.keystore
        layer = {proto: self.options[proto]} if proto in self.options else {}
        return url_to_fs(ENC_PREFIX + inner, **enc_kwargs, **layer)


def location(url: str, *, force_encrypted: bool = False, keys: Sequence[str] = (), keystore: str | None = None,
             options: dict[str, dict[str, Any]] | None = None) -> Location:
    if not url:
        raise ConfigurationError("empty path")
    encrypted = force_encrypted or is_encrypted_url(url)
    return Location(url=url, encrypted=encrypted, keys=tuple(keys), keystore=keystore, options=dict(options or {}))


def key_options(func: F) -> F:
    """The options every command that touches encrypted objects takes."""
    func = click.option("-o", "--option", "options", multiple=True, metavar="PROTO.NAME=VALUE",
                        help="Storage option for one layer, e.g. s3.endpoint_url=http://127.0.0.1:5000 "
                             "or enc.segment_size=1048576, or a key-service option such as "
                             "aws-kms.region_name=eu-west-1 (values parsed as JSON when possible).")(func)
    func = click.option("--keystore", metavar="DIR", default=None,
                        help="Local keystore directory (default $ENCFS_HOME or ~/.encfs).")(func)
    func = click.option("-k", "--key", "keys", multiple=True, metavar="URI", envvar="ENCFS_KEY",
                        help="Root key URI, e.g. local://default, aws-kms://alias/lake, "
                             "pkcs11://token/label: wraps new objects (repeat to wrap under several keys) "
                             "and names the aws-kms/pkcs11 keys reads may use "
                             "(default local://default; env ENCFS_KEY).")(func)
    return func


#: Characters that steer a terminal or reorder text: C0 controls (ESC starts
#: escape sequences; CR and LF forge lines), DEL, C1 controls (0x9b is a
#: one-byte CSI), and the Unicode bidi controls (Trojan Source).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` safe for a terminal: every control or bidi character shown as
    a ``\\xNN`` / ``\\uNNNN`` escape.  Object names, key ids, versions,
    contexts and error texts can come from unauthenticated headers or from
    storage, so every human-readable line goes through this (or :func:`echo`);
    JSON output needs nothing more, as ``json.dumps`` escapes them itself."""
    return _UNPRINTABLE.sub(_escape_char, str(text))


def echo(line: object = "", *, err: bool = False) -> None:
    """Print one logical line through :func:`printable` (an embedded newline
    is escaped too, so a value cannot forge a line of its own)."""
    click.echo(printable(line), err=err)


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")

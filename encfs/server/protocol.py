"""The AWS KMS JSON 1.1 wire format, checked against botocore's own model.

Requests are ``POST /`` with ``X-Amz-Target: TrentService.<Operation>`` and a
JSON body.  :func:`parse_input` validates the body against the operation's
input shape in botocore's KMS model (required members, types, lengths,
ranges, enums) and decodes blobs from base64, so the handlers receive clean
values.  Errors are HTTP 400 ``{"__type": code, "message": text}``; botocore
maps ``__type`` to ``error.response["Error"]["Code"]``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

TARGET_PREFIX = "TrentService."
CONTENT_TYPE = "application/x-amz-json-1.1"


class KMSError(Exception):
    """A KMS error response.  ``message`` never holds key material or secrets."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> bytes:
        return json.dumps({"__type": self.code, "message": self.message}).encode()


def validation(message: str) -> KMSError:
    return KMSError("ValidationException", message)


@functools.lru_cache(maxsize=1)
def service_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("kms")


@functools.lru_cache(maxsize=128)
def operation_model(name: str) -> Any:
    try:
        return service_model().operation_model(name)
    except Exception:  # noqa: BLE001 - botocore's OperationNotFoundError and friends
        return None


@dataclass
class _Spec:
    """One botocore shape, flattened once into plain values (the model's
    own objects compute their properties on every access)."""

    kind: str
    min: int | None = None
    max: int | None = None
    enum: frozenset[str] | None = None
    pattern: re.Pattern[str] | None = None
    members: dict[str, _Spec] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    member: _Spec | None = None
    key: _Spec | None = None
    value: _Spec | None = None


def _compile(shape: Any, seen: dict[str, _Spec] | None = None) -> _Spec:
    seen = {} if seen is None else seen
    if shape.name in seen:
        return seen[shape.name]
    meta = shape.metadata
    spec = _Spec(kind=shape.type_name, min=meta.get("min"), max=meta.get("max"),
                 enum=frozenset(shape.enum) if getattr(shape, "enum", None) else None,
                 pattern=_pattern(meta.get("pattern")))
    seen[shape.name] = spec
    if spec.kind == "structure":
        spec.members = {name: _compile(m, seen) for name, m in shape.members.items()}
        spec.required = tuple(shape.required_members)
    elif spec.kind == "list":
        spec.member = _compile(shape.member, seen)
    elif spec.kind == "map":
        spec.key, spec.value = _compile(shape.key, seen), _compile(shape.value, seen)
    return spec


def _pattern(text: str | None) -> re.Pattern[str] | None:
    """A model ``pattern`` as Python reads it: searched, not implicitly
    anchored (Smithy's rule), ``$`` only at the very end and ``\\w`` ASCII
    (ECMAScript's), so a grantee ARN or grant name cannot carry a newline."""
    if not text:
        return None
    if text.endswith("$") and not text.endswith("\\$"):
        text = text[:-1] + r"\Z"
    try:
        return re.compile(text, re.ASCII)
    except re.error:  # a pattern Python cannot read: not enforced
        return None


@functools.lru_cache(maxsize=128)
def _input_spec(operation: str) -> _Spec | None:
    op = operation_model(operation)
    if op is None:
        raise KMSError("UnknownOperationException", f"unknown operation {operation}")
    return _compile(op.input_shape) if op.input_shape is not None else None


def parse_input(operation: str, body: bytes) -> dict[str, Any]:
    """The request body of ``operation`` as validated Python values."""
    spec = _input_spec(operation)
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else {}  # (str: json skips sniffing)
    except (UnicodeDecodeError, ValueError, RecursionError):  # (deep nesting: RecursionError)
        raise KMSError("SerializationException", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise KMSError("SerializationException", "the request body must be a JSON object")
    if spec is None:
        return {}
    errors: list[str] = []
    out = _structure(spec, data, "", errors)
    if errors:
        n = len(errors)
        raise validation(f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(errors[:5]))
    return out


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _structure(spec: _Spec, data: dict[str, Any], where: str, errors: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in spec.required:
        if data.get(name) is None:
            errors.append(f"Value null at '{where}{_lower_first(name)}' failed to satisfy constraint: "
                          "Member must not be null")
    for name, value in data.items():
        member = spec.members.get(name)
        if member is None or value is None:
            continue  # unknown members are ignored, as KMS does
        out[name] = _value(member, value, f"{where}{_lower_first(name)}", errors)
    return out


def _value(spec: _Spec, value: Any, where: str, errors: list[str]) -> Any:
    kind = spec.kind
    if kind == "string":
        if not isinstance(value, str):
            errors.append(f"Value at '{where}' must be a string")
            return ""
        if not clean_text(value):
            # A lone surrogate (JSON "\\ud800") or NUL cannot be stored,
            # audited (UTF-8) or kept in PostgreSQL text: refused here rather
            # than failing later as an internal error, or after a change landed.
            errors.append(f"Value at '{where}' must be Unicode text without NUL or unpaired surrogates")
            return ""
        _length(spec, len(value), where, errors)
        if spec.pattern is not None and not spec.pattern.search(value):
            errors.append(f"Value at '{where}' failed to satisfy constraint: Member must satisfy regular "
                          f"expression pattern: {spec.pattern.pattern}")
        if spec.enum is not None and value not in spec.enum:
            errors.append(f"Value '{value}' at '{where}' failed to satisfy constraint: Member must satisfy enum "
                          f"value set: [{', '.join(sorted(spec.enum))}]")
        return value
    if kind == "structure":
        if not isinstance(value, dict):
            errors.append(f"Value at '{where}' must be an object")
            return {}
        return _structure(spec, value, where + ".", errors)
    if kind == "list":
        if not isinstance(value, list):
            errors.append(f"Value at '{where}' must be a list")
            return []
        _length(spec, len(value), where, errors)
        assert spec.member is not None
        return [_value(spec.member, v, f"{where}.{i + 1}.member", errors) for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            errors.append(f"Value at '{where}' must be a map")
            return {}
        _length(spec, len(value), where, errors)
        assert spec.key is not None and spec.value is not None
        return {_value(spec.key, k, where, errors): _value(spec.value, v, where, errors) for k, v in value.items()}
    if kind == "blob":
        if not isinstance(value, str):
            errors.append(f"Value at '{where}' must be base64 text")
            return b""
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            errors.append(f"Value at '{where}' is not valid base64")
            return b""
        _length(spec, len(raw), where, errors)
        return raw
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"Value at '{where}' must be an integer")
            return 0
        if spec.min is not None and value < spec.min:
            errors.append(f"Value '{value}' at '{where}' failed to satisfy constraint: Member must have value "
                          f"greater than or equal to {spec.min}")
        if spec.max is not None and value > spec.max:
            errors.append(f"Value '{value}' at '{where}' failed to satisfy constraint: Member must have value "
                          f"less than or equal to {spec.max}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"Value at '{where}' must be a boolean")
            return False
        return value
    return value  # timestamps and doubles: not in any request we serve


def clean_text(value: str) -> bool:
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _length(spec: _Spec, n: int, where: str, errors: list[str]) -> None:
    if spec.min is not None and n < spec.min:
        errors.append(f"Value at '{where}' failed to satisfy constraint: Member must have length greater than or "
                      f"equal to {spec.min}")
    if spec.max is not None and n > spec.max:
        errors.append(f"Value at '{where}' failed to satisfy constraint: Member must have length less than or "
                      f"equal to {spec.max}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_output(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":")).encode()

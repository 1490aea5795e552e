"""Root-key providers and the registry that maps URI schemes to them.

Providers import their SDKs lazily, so ``import encfs`` needs neither boto3
nor python-pkcs11.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError
from .base import KeyInfo, KeyProvider, KeyRef

#: scheme -> "module:ClassName" (imported on first use).
_REGISTRY: dict[str, str] = {
    "local": "encfs.providers.local:LocalProvider",
    "aws-kms": "encfs.providers.aws_kms:AwsKmsProvider",
    "pkcs11": "encfs.providers.pkcs11:Pkcs11Provider",
}


def register_provider(scheme: str, target: str | Callable[..., KeyProvider]) -> None:
    """Register a provider class (or ``"module:Class"`` path) for ``scheme``."""
    _REGISTRY[scheme] = target  # type: ignore[assignment]


def provider_class(scheme: str) -> Callable[..., KeyProvider]:
    target = _REGISTRY.get(scheme)
    if target is None:
        raise ConfigurationError(
            f"unknown key provider scheme {scheme!r}; known: {', '.join(sorted(_REGISTRY))}"
        )
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"key provider {scheme!r} is not available: {exc}") from exc
    return getattr(mod, name)


def make_provider(scheme: str, options: Mapping[str, Any] | None = None) -> KeyProvider:
    return provider_class(scheme)(**dict(options or {}))


__all__ = ["KeyProvider", "KeyRef", "KeyInfo", "register_provider", "provider_class", "make_provider"]

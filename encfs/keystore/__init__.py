"""encfs's own key storage (the embedded default key service)."""

from .store import DEFAULT_ALIAS, LocalKeystore, default_home

__all__ = ["DEFAULT_ALIAS", "LocalKeystore", "default_home"]

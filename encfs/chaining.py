"""Target options nested in the enc layer's options (chained URLs).

fsspec routes the options of a chained URL by protocol name, but only at the
top level of ``storage_options``: in ``simplecache::enc::s3://b/k`` with
``enc={"key": ..., "s3": {"endpoint_url": ...}}`` the ``"s3"`` dict arrives
inside the enc layer's options, and an ignored ``"s3"`` option would send
requests to the real AWS endpoints.  So the enc layer takes a dict named
after its target's protocol (any of the target's aliases) as target options,
and refuses dicts named after any other filesystem protocol: they belong to a
layer it does not build.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec

from .errors import ConfigurationError


def _aliases(protocol: str) -> tuple[str, ...]:
    """Every name of ``protocol``'s filesystem class (``s3`` -> ``s3``, ``s3a``)."""
    try:
        names = fsspec.get_filesystem_class(protocol).protocol
    except (ImportError, ValueError):
        return (protocol,)
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(dict.fromkeys((protocol, *names)))


def nested_target_options(target_protocol: str | None, target_options: Mapping[str, Any] | None,
                          has_fs: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The target's options: ``target_options`` merged with a nested dict
    named after the target protocol, popped from ``kwargs`` (the enc layer's
    other options).  Raises ConfigurationError for a nested dict that names
    another protocol, or that disagrees with ``target_options``."""
    merged = dict(target_options or {})
    layers = set(fsspec.available_protocols())
    nested = [name for name, value in kwargs.items() if name in layers and isinstance(value, Mapping)]
    if not nested:
        return merged
    target = target_protocol or "file"
    mine = set(_aliases(target))
    for name in nested:
        if has_fs or name not in mine:
            where = "a target given as fs=" if has_fs else f"{target}://"
            raise ConfigurationError(
                f"the enc layer got options for {name}:// but stores on {where}; in a chained URL give each "
                f"layer's options under its own protocol name at the top level of storage_options"
            )
        for option, value in kwargs.pop(name).items():
            if option in merged and merged[option] != value:
                raise ConfigurationError(
                    f"option {option!r} of the {target}:// target is given twice with different values "
                    f"(in target_options and in the {name!r} options nested in the enc layer's)"
                )
            merged[option] = value
    return merged

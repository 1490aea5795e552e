"""Moved to :mod:`encfs.targets` (target I/O); this name stays so existing
imports keep working."""

from .targets import TEMP_MARK, BufferSink, LocalSink, Sink, TempSiblingSink, open_sink

__all__ = ["TEMP_MARK", "BufferSink", "LocalSink", "Sink", "TempSiblingSink", "open_sink"]

"""AES-256-GCM segment cipher (FORMAT.md section 6).

Segment ``i`` is sealed under the object's body key with the 12-byte nonce
``uint64_be(i) || uint32_be(final)`` where ``final`` is 1 for the last
segment and 0 otherwise.  The body key is unique per object (kdf.py), so the
deterministic nonces never repeat under one key; the index in the nonce
detects reordering and duplication, the final flag detects truncation at a
segment boundary and extension.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .layout import TAG_BYTES

_NONCE = struct.Struct(">QI")
MAX_SEGMENTS = 2**64 - 1


class SegmentAuthError(Exception):
    """A segment failed authentication (translated to IntegrityError above)."""


class SegmentCipher:
    """Seals and opens the segments of one object."""

    __slots__ = ("_aead",)

    def __init__(self, body_key: bytes) -> None:
        self._aead = AESGCM(body_key)

    def __repr__(self) -> str:
        return "SegmentCipher(<key hidden>)"

    def __reduce__(self):  # never pickle a live key
        raise TypeError("SegmentCipher cannot be pickled")

    @staticmethod
    def nonce(index: int, final: bool) -> bytes:
        if not 0 <= index < MAX_SEGMENTS:
            raise ValueError("segment index out of range")
        return _NONCE.pack(index, 1 if final else 0)

    def seal(self, index: int, plaintext: bytes, final: bool) -> bytes:
        return self._aead.encrypt(self.nonce(index, final), plaintext, None)

    def open(self, index: int, ciphertext: bytes, final: bool) -> bytes:
        if len(ciphertext) < TAG_BYTES:
            raise SegmentAuthError()
        try:
            return self._aead.decrypt(self.nonce(index, final), ciphertext, None)
        except InvalidTag:
            raise SegmentAuthError() from None

    def open_run_into(self, first: int, sealed: memoryview, out: memoryview, segment_size: int,
                      final_index: int) -> None:
        """:meth:`open_into` for consecutive segments ``first, first + 1, ...``
        held back to back in ``sealed``, into ``out`` back to back (one call
        per run: the per-segment Python cost is what remains of a read from
        memory).  Raises SegmentAuthError at the first segment that fails;
        ``out`` then holds unauthenticated bytes (see :meth:`open_into`)."""
        stride = segment_size + TAG_BYTES
        count = -(-len(sealed) // stride)
        if first < 0 or first + count > MAX_SEGMENTS:
            raise SegmentAuthError()
        decrypt_into, pack = self._aead.decrypt_into, _NONCE.pack
        for j in range(count):
            index = first + j
            part = sealed[j * stride : (j + 1) * stride]
            size = len(part) - TAG_BYTES
            at = j * segment_size
            if size < 0 or at + size > len(out):
                raise SegmentAuthError()
            try:
                decrypt_into(pack(index, 1 if index == final_index else 0), part, None, out[at : at + size])
            except InvalidTag:
                raise SegmentAuthError() from None

    #: Whether :meth:`open_into` decrypts in place (cryptography >= 45);
    #: without it callers use :meth:`open`.
    can_open_into = hasattr(AESGCM, "decrypt_into")

    def open_into(self, index: int, ciphertext: bytes | memoryview, final: bool, out: memoryview) -> None:
        """:meth:`open` into ``out`` (exactly ``len(ciphertext) - 16`` bytes).

        On failure ``out`` may hold unauthenticated bytes: it must be a
        buffer of the caller's own that is never released then."""
        if len(ciphertext) < TAG_BYTES or len(out) != len(ciphertext) - TAG_BYTES:
            raise SegmentAuthError()
        try:
            self._aead.decrypt_into(self.nonce(index, final), ciphertext, None, out)
        except InvalidTag:
            raise SegmentAuthError() from None

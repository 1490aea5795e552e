"""Per-object key derivation and key commitment (FORMAT.md section 5).

From one data key (DEK) and the object's random 32-byte id, HKDF-SHA256
derives three independent values: the body key (AES-256-GCM segments), the
header MAC key (HMAC-SHA256) and the key commitment.  Because the object id is
the HKDF salt, a DEK reused across objects (data-key cache) still gives every
object its own body key, so deterministic segment nonces never repeat under
one key.  The construction follows the AWS Encryption SDK's DERIVEKEY /
COMMITKEY split, with HMAC instead of GCM for the header so that a header can
be rewritten (rename, rewrap) without nonce reuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DEK_BYTES = 32
OBJECT_ID_BYTES = 32

_LABEL_BODY = b"ENCF v1 body key"
_LABEL_MAC = b"ENCF v1 header mac key"
_LABEL_COMMIT = b"ENCF v1 key commitment"


@dataclass(frozen=True)
class ObjectKeys:
    """Keys of one object.  ``repr`` shows nothing secret."""

    body_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)
    commitment: bytes = field(repr=False)

    def matches(self, commitment: bytes) -> bool:
        """Constant-time comparison with a commitment read from a header."""
        return constant_time.bytes_eq(self.commitment, commitment)


def _expand(dek: bytes, object_id: bytes, suite: int, label: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=object_id,
        info=label + bytes([suite]),
    ).derive(dek)


def derive_object_keys(dek: bytes, object_id: bytes, suite: int) -> ObjectKeys:
    """Derive the body key, header MAC key and commitment of one object."""
    if len(dek) != DEK_BYTES:
        raise ValueError("data key must be 32 bytes")
    if len(object_id) != OBJECT_ID_BYTES:
        raise ValueError("object id must be 32 bytes")
    return ObjectKeys(
        body_key=_expand(dek, object_id, suite, _LABEL_BODY),
        mac_key=_expand(dek, object_id, suite, _LABEL_MAC),
        commitment=_expand(dek, object_id, suite, _LABEL_COMMIT),
    )

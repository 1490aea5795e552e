"""Root-key cryptography: self-describing ciphertext blobs.

A blob names the key and key version that encrypted it, so Decrypt (which
carries no KeyId) finds the key, and authorises against *that* key's policy
and grants, before it decrypts anything::

    magic "EKS1" | u8 len | key id (utf-8) | u32 version | 12-byte nonce | AES-256-GCM ciphertext + tag

The AEAD associated data is the blob's header (magic through version) plus
the canonical encryption context (sorted, compact JSON): a wrong context, a
blob claiming another key or version, or any flipped bit fails the tag.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .protocol import KMSError

MAGIC = b"EKS1"
_NONCE = 12
MATERIAL_BYTES = 32


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    return json.dumps(dict(context or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def invalid_ciphertext() -> KMSError:
    return KMSError("InvalidCiphertextException", "The ciphertext is invalid or does not match the encryption context.")


@dataclass(frozen=True)
class Blob:
    key_id: str
    version: int
    header: bytes
    nonce: bytes
    body: bytes


def parse_blob(blob: bytes) -> Blob:
    try:
        if blob[:4] != MAGIC:
            raise ValueError
        n = blob[4]
        key_id = blob[5:5 + n].decode("utf-8")
        (version,) = struct.unpack(">I", blob[5 + n:9 + n])
        header_end = 9 + n
        nonce = blob[header_end:header_end + _NONCE]
        body = blob[header_end + _NONCE:]
        if len(nonce) != _NONCE or len(body) < 16 or not key_id:
            raise ValueError
    except (IndexError, ValueError, struct.error, UnicodeDecodeError):
        raise invalid_ciphertext() from None
    return Blob(key_id, version, blob[:header_end], nonce, body)


def encrypt(material: bytes, key_id: str, version: int, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
    kid = key_id.encode("utf-8")
    header = MAGIC + bytes([len(kid)]) + kid + struct.pack(">I", version)
    nonce = os.urandom(_NONCE)
    return header + nonce + AESGCM(material).encrypt(nonce, plaintext, header + canonical_context(context))


def decrypt(material: bytes, blob: Blob, context: Mapping[str, str] | None) -> bytes:
    try:
        return AESGCM(material).decrypt(blob.nonce, blob.body, blob.header + canonical_context(context))
    except (InvalidTag, ValueError):
        raise invalid_ciphertext() from None


def new_material() -> bytes:
    return os.urandom(MATERIAL_BYTES)

"""PKCS#11 root keys provisioned outside encfs (issue 9, item 6): a key made
with the token's own tools (here python-pkcs11 ``generate_key(label=...)``
directly, so no encfs ``CKA_ID``) is usable as ``pkcs11://token/label`` when
it is a sensitive, non-extractable AES-256 key; rotating it adds encfs
versions; anything else under the label is refused with its cause."""

from __future__ import annotations

import os

import fsspec
import pytest
from _softhsm import TOKEN, unique_label

from encfs.errors import ConfigurationError, KeyStateError
from encfs.providers import KeyRef

CTX = {"dataset": "provisioned"}


def _provider():
    from encfs.providers.pkcs11 import Pkcs11Provider

    return Pkcs11Provider()


@pytest.fixture
def p11():
    import pkcs11

    return pkcs11


@pytest.fixture
def so_session(hsm, hsm_key, p11):
    """A session of the "security officer's tool": our own, PIN-less (the
    provider's pool has logged the application in, see test_pkcs11.py)."""
    token = p11.lib(hsm.module).get_token(token_label=TOKEN)
    s = token.open(rw=True)
    yield s
    s.close()


def _aes(session, p11, label: str, *, bits: int = 256, key_id: bytes | None = None, **attrs):
    """generate_key as another tool would call it: label, maybe an id, the
    library's default template plus ``attrs``."""
    template = {getattr(p11.Attribute, k.upper()): v for k, v in attrs.items()}
    return session.generate_key(p11.KeyType.AES, bits, label=label, id=key_id, store=True, template=template or None)


def _cli(args, capsys):
    from encfs.cli.main import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


# -- usable keys ------------------------------------------------------------------------
@pytest.mark.parametrize("key_id", [None, b"\x01", b"root-2026", bytes(range(16))],
                         ids=["no-id", "one-byte", "text", "16-bytes"])
def test_foreign_key_is_used_whatever_its_id(so_session, p11, hsm, key_id, capsys):
    A = p11.Attribute
    label = unique_label("so")
    key = _aes(so_session, p11, label, key_id=key_id)
    assert key[A.SENSITIVE] is True and key[A.EXTRACTABLE] is False  # SoftHSM2's defaults
    uri = f"pkcs11://{TOKEN}/{label}"

    path = f"enc::memory://foreign-{label}/data.bin"
    data = os.urandom(70_000)
    with fsspec.open(path, "wb", enc={"key": uri}) as f:
        f.write(data)
    with fsspec.open(path, "rb", enc={"key": uri}) as f:
        assert f.read() == data

    info = _provider().describe(KeyRef.parse(uri))
    assert info.versions == ["1"] and info.current_version == "1"
    assert info.extra["provisioned"].startswith("outside encfs") and info.extra["usable"] is True
    assert info.extra["sensitive"] is True and info.extra["extractable"] is False
    assert uri in {k.uri for k in _provider().list_keys()}

    code, out, err = _cli(["hsm", "check", uri], capsys)
    assert code == 0, err
    assert "round trip:       ok (version 1)" in out and "provisioned:      outside encfs" in out


def test_rotating_a_foreign_key_adds_encfs_versions(so_session, p11, hsm):
    A = p11.Attribute
    label = unique_label("so-rot")
    _aes(so_session, p11, label)
    ref = KeyRef.parse(f"pkcs11://{TOKEN}/{label}")
    provider = _provider()
    dek1 = os.urandom(32)
    w1 = provider.wrap(ref, dek1, CTX)
    assert w1.version == "1"

    info = provider.rotate_key(ref)
    assert info.versions == ["1", "2"] and info.current_version == "2"
    v2 = list(so_session.get_objects({A.LABEL: label, A.ID: (2).to_bytes(4, "big")}))
    assert len(v2) == 1 and v2[0][A.EXTRACTABLE] is False and v2[0][A.WRAP] is False  # encfs's own template
    dek2 = os.urandom(32)
    w2 = provider.wrap(ref, dek2, CTX)
    assert w2.version == "2"
    assert provider.unwrap(w1, CTX) == dek1 and provider.unwrap(w2, CTX) == dek2
    assert provider.rotate_key(ref).current_version == "3"
    assert provider.unwrap(w1, CTX) == dek1  # the provisioned key keeps serving version 1

    with pytest.raises(ConfigurationError, match="provisioned outside encfs"):
        provider.create_key(alias=f"{TOKEN}/{_aes(so_session, p11, unique_label('so-new'))[A.LABEL]}")


# -- unusable labels: the error names the cause ------------------------------------------------
def _extractable(s, p11, label):
    _aes(s, p11, label, extractable=True)


def _not_sensitive(s, p11, label):
    _aes(s, p11, label, sensitive=False)


def _aes128(s, p11, label):
    _aes(s, p11, label, bits=128)


def _des3(s, p11, label):
    s.generate_key(p11.KeyType.DES3, label=label, store=True)


def _rsa_pair(s, p11, label):
    s.generate_keypair(p11.KeyType.RSA, 2048, label=label, store=True)


def _wrap_only(s, p11, label):
    _aes(s, p11, label, encrypt=False, decrypt=False, wrap=True, unwrap=True)


def _two_keys(s, p11, label):
    _aes(s, p11, label, key_id=b"\x01")
    _aes(s, p11, label, key_id=b"\x02")


UNUSABLE = {
    "extractable": (_extractable, "it is extractable (CKA_EXTRACTABLE=true"),
    "not-sensitive": (_not_sensitive, "it is not sensitive (CKA_SENSITIVE=false"),
    "aes-128": (_aes128, "its key type is AES-128 (root keys are AES-256)"),
    "des3": (_des3, "its key type is DES3 (root keys are AES-256)"),
    "rsa-pair": (_rsa_pair, "its label names only other objects (RSA private key, RSA public key)"),
    "wrap-only": (_wrap_only, ("it may not encrypt (CKA_ENCRYPT=false: encfs wraps data keys with C_Encrypt) "
                              "(it allows only C_WrapKey/C_UnwrapKey)")),
    "several": (_two_keys, "2 secret keys carry the label"),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_label_names_the_cause(so_session, p11, hsm, case, capsys):
    make, cause = UNUSABLE[case]
    label = unique_label(f"bad-{case}")
    make(so_session, p11, label)
    uri = f"pkcs11://{TOKEN}/{label}"

    with pytest.raises(KeyStateError) as err:
        _provider().wrap(KeyRef.parse(uri), os.urandom(32), CTX)
    assert uri in str(err.value) and cause.split(" (")[0] in str(err.value), str(err.value)
    assert err.value.key == uri and err.value.operation == "wrap"

    # Through the filesystem: nothing is written, the same cause is given.
    path = f"memory://unusable-{label}/x.bin"
    with pytest.raises(KeyStateError, match=label), fsspec.open(f"enc::{path}", "wb", enc={"key": uri}) as f:
        f.write(b"secret")
    assert not fsspec.filesystem("memory").exists(path)

    code, _out, err_text = _cli(["hsm", "check", uri], capsys)
    assert code != 0 and err_text.startswith("encfs: error: ") and err_text.count("\n") == 1, err_text
    assert cause in err_text, err_text


def test_second_key_under_a_used_label_blocks_writes_not_reads(so_session, p11, hsm):
    label = unique_label("so-dup")
    _aes(so_session, p11, label)
    ref = KeyRef.parse(f"pkcs11://{TOKEN}/{label}")
    provider = _provider()
    dek = os.urandom(32)
    wrapped = provider.wrap(ref, dek, CTX)
    _aes(so_session, p11, label, key_id=b"other")  # someone adds a second one later
    fresh = _provider()
    assert fresh.unwrap(wrapped, CTX) == dek  # either may have wrapped it: GCM tells which
    with pytest.raises(KeyStateError, match="ambiguous"):
        fresh.wrap(ref, dek, CTX)
    info = fresh.describe(ref)
    assert info.extra["usable"] is False and "2 secret keys" in info.extra["problem"]

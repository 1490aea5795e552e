"""One contract, every key provider: the local keystore, a PKCS#11 token
(SoftHSM2) and AWS KMS (moto, in process).

Each backend fixture yields a :class:`Backend`: a provider plus how to make a
fresh root key, the URI of a key that does not exist, and the filesystem
options that reach the same provider.  A backend whose SDK is missing is
skipped, so a provider module that lands later joins automatically.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from _softhsm import TOKEN, unique_label

from encfs import EncryptedFileSystem
from encfs.errors import AccessDeniedError, IntegrityError, KeyNotFoundError
from encfs.providers import KeyProvider, KeyRef


CTX = {"purpose": "contract", "tenant": "t-1"}


@dataclass
class Backend:
    name: str
    provider: KeyProvider
    new_key: Callable[[], KeyRef]
    missing: KeyRef
    fs_options: dict[str, Any]
    #: whether a rotation produces a new, distinct version id
    versioned_rotation: bool = True
    #: errors a tampered or foreign wrapped blob may raise
    tamper_errors: tuple[type[Exception], ...] = (IntegrityError,)


def _local(tmp_path) -> Backend:
    from encfs.providers.local import LocalProvider

    home = tmp_path / "keystore"
    provider = LocalProvider(home)

    def new_key() -> KeyRef:
        return KeyRef("local", provider.create_key(alias=unique_label("contract")).key_id)

    return Backend("local", provider, new_key, KeyRef("local", "no-such-key"), {"keystore": str(home)})


def _pkcs11(hsm_env) -> Backend:
    from encfs.providers.pkcs11 import Pkcs11Provider

    provider = Pkcs11Provider()

    def new_key() -> KeyRef:
        return KeyRef.parse(provider.create_key(alias=f"{TOKEN}/{unique_label('contract')}").uri)

    return Backend("pkcs11", provider, new_key, KeyRef("pkcs11", f"{TOKEN}/no-such-key"), {})


def _aws_kms(monkeypatch) -> Iterator[Backend]:
    from moto import mock_aws

    from encfs.providers.aws_kms import AwsKmsProvider

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        provider = AwsKmsProvider(region_name="us-east-1")

        def new_key() -> KeyRef:
            return KeyRef("aws-kms", provider.create_key().key_id)

        missing = KeyRef("aws-kms", "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000")
        # moto rotates without making new key material (DESIGN.md section 5),
        # and answers AccessDeniedException where real KMS answers
        # InvalidCiphertextException/IncorrectKeyException (a blob whose
        # embedded key id is garbled or names another key).
        yield Backend("aws-kms", provider, new_key, missing, {"providers": {"aws-kms": {"region_name": "us-east-1"}}},
                      versioned_rotation=False, tamper_errors=(IntegrityError, AccessDeniedError))


BACKENDS = ["local", "pkcs11", "aws-kms"]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path, monkeypatch) -> Iterator[Backend]:
    if request.param == "local":
        yield _local(tmp_path)
    elif request.param == "pkcs11":
        yield _pkcs11(request.getfixturevalue("hsm"))
    else:
        yield from _aws_kms(monkeypatch)


class TestProviderContract:
    def test_wrap_unwrap_round_trip(self, backend: Backend) -> None:
        ref = backend.new_key()
        dek = os.urandom(32)
        wrapped = backend.provider.wrap(ref, dek, CTX)
        assert wrapped.provider == backend.provider.scheme == ref.scheme
        assert wrapped.key_id == backend.provider.resolve(ref)
        assert dek not in wrapped.wrapped and dek.hex() not in repr(wrapped)
        assert backend.provider.unwrap(wrapped, dict(CTX)) == dek
        # generate_data_key: a fresh 32-byte key, wrapped under the same root key
        dek2, wrapped2 = backend.provider.generate_data_key(ref, CTX)
        assert len(dek2) == 32 and dek2 != dek
        assert backend.provider.unwrap(wrapped2, CTX) == dek2

    def test_wrapping_is_randomised(self, backend: Backend) -> None:
        ref = backend.new_key()
        dek = os.urandom(32)
        assert backend.provider.wrap(ref, dek, CTX).wrapped != backend.provider.wrap(ref, dek, CTX).wrapped

    @pytest.mark.parametrize("context", [{}, {"purpose": "contract"}, {**CTX, "tenant": "t-2"}, {**CTX, "x": "y"}])
    def test_wrong_context_fails(self, backend: Backend, context: dict[str, str]) -> None:
        ref = backend.new_key()
        wrapped = backend.provider.wrap(ref, os.urandom(32), CTX)
        with pytest.raises(IntegrityError):
            backend.provider.unwrap(wrapped, context)

    def test_tampered_blob_fails(self, backend: Backend) -> None:
        ref = backend.new_key()
        wrapped = backend.provider.wrap(ref, os.urandom(32), CTX)
        blob = wrapped.wrapped
        for pos in sorted({0, 1, len(blob) // 2, len(blob) - 1}):
            bad = blob[:pos] + bytes([blob[pos] ^ 0x01]) + blob[pos + 1 :]
            with pytest.raises(backend.tamper_errors):
                backend.provider.unwrap(replace(wrapped, wrapped=bad), CTX)
        for bad in (blob[:-1], blob + b"\0", blob[: len(blob) // 2]):
            with pytest.raises(backend.tamper_errors):
                backend.provider.unwrap(replace(wrapped, wrapped=bad), CTX)

    def test_entry_moved_to_another_key_fails(self, backend: Backend) -> None:
        ref, other = backend.new_key(), backend.new_key()
        wrapped = backend.provider.wrap(ref, os.urandom(32), CTX)
        moved = replace(wrapped, key_id=backend.provider.resolve(other))
        with pytest.raises(backend.tamper_errors):
            backend.provider.unwrap(moved, CTX)

    def test_unknown_key(self, backend: Backend) -> None:
        with pytest.raises(KeyNotFoundError) as err:
            backend.provider.describe(backend.missing)
        # the error names the key it is about
        assert backend.missing.name.rsplit("/", 1)[-1] in f"{err.value} {err.value.key}"
        with pytest.raises(KeyNotFoundError):
            backend.provider.wrap(backend.missing, os.urandom(32), CTX)

    def test_describe_and_list(self, backend: Backend) -> None:
        ref = backend.new_key()
        info = backend.provider.describe(ref)
        assert info.provider == backend.provider.scheme
        assert info.key_id == backend.provider.resolve(ref)
        assert info.state == "Enabled"
        assert info.current_version in info.versions or not info.versions
        assert info.key_id in {k.key_id for k in backend.provider.list_keys()}
        as_dict = info.to_dict()
        assert as_dict["uri"] == info.uri and as_dict["key_id"] == info.key_id

    def test_rotation_keeps_old_versions_unwrapping(self, backend: Backend) -> None:
        ref = backend.new_key()
        before = backend.provider.describe(ref)
        dek = os.urandom(32)
        old = backend.provider.wrap(ref, dek, CTX)
        after = backend.provider.rotate_key(ref)
        new = backend.provider.wrap(ref, dek, CTX)
        if backend.versioned_rotation:
            assert after.current_version != before.current_version
            assert old.version == before.current_version and new.version == after.current_version
            assert set(before.versions) < set(after.versions)
        assert backend.provider.unwrap(old, CTX) == dek
        assert backend.provider.unwrap(new, CTX) == dek

    def test_concurrent_use(self, backend: Backend) -> None:
        ref = backend.new_key()
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(15):
                    dek = os.urandom(32)
                    assert backend.provider.unwrap(backend.provider.wrap(ref, dek, CTX), CTX) == dek
            except BaseException as exc:  # noqa: BLE001  (reported below, in the test thread)
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    def test_provider_refuses_pickling(self, backend: Backend) -> None:
        with pytest.raises(TypeError):
            pickle.dumps(backend.provider)

    def test_filesystem_round_trip(self, backend: Backend, memfs) -> None:
        ref = backend.new_key()
        fs = EncryptedFileSystem(fs=memfs, key=str(ref), skip_instance_cache=True, **backend.fs_options)
        data = os.urandom(150_000)
        fs.pipe_file("/contract/obj.bin", data)
        assert data[:32] not in memfs.cat_file("/contract/obj.bin")
        assert fs.cat_file("/contract/obj.bin") == data
        assert fs.cat_file("/contract/obj.bin", start=70_000, end=70_100) == data[70_000:70_100]

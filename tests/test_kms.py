"""AWS KMS provider: moto in-process for behaviour, botocore's Stubber for
the error translation (moto does not enforce key states on Decrypt)."""

from __future__ import annotations

import pickle
import re

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws

from encfs import EncryptedFileSystem
from encfs.errors import (
    AccessDeniedError,
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyServiceError,
    KeyStateError,
    KeyUnavailableError,
    NoUsableKeyError,
)
from encfs.format import WrappedKey
from encfs.keyring import Keyring
from encfs.providers.aws_kms import AwsKmsProvider, parse_key_arn
from encfs.providers.base import KeyRef

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/11111111-2222-3333-4444-555555555555"


@pytest.fixture
def aws_env(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def kms(aws_env):
    with mock_aws():
        yield AwsKmsProvider(region_name=REGION)


def _efs(memfs, **kw):
    return EncryptedFileSystem(fs=memfs, providers={"aws-kms": {"region_name": REGION}}, skip_instance_cache=True, **kw)


def _record_calls(provider: AwsKmsProvider, region: str | None = None) -> list[tuple[str, dict]]:
    """Record every KMS API call (operation, params) the provider's client makes."""
    calls: list[tuple[str, dict]] = []
    client = provider._client(region)

    def hook(params, model, **_):
        calls.append((model.name, dict(params)))

    client.meta.events.register("provide-client-params.kms.*", hook)
    return calls


# -- behaviour against moto -------------------------------------------------------------
def test_roundtrip_records_arn_and_coarse_context(kms, memfs):
    kms.create_key(alias="lake", description="lake root key")
    efs = _efs(memfs, key="aws-kms://alias/lake", context={"team": "sales"})
    prov = efs.keyring.provider("aws-kms")
    calls = _record_calls(prov)
    efs.pipe_file("/lake/a.bin", b"secret rows" * 1000)
    assert efs.cat_file("/lake/a.bin") == b"secret rows" * 1000
    header = efs.header("/lake/a.bin")
    [entry] = header.wrapped_keys
    assert entry.provider == "aws-kms" and parse_key_arn(entry.key_id)
    ops = [c[0] for c in calls]
    assert "GenerateDataKey" in ops and "Decrypt" in ops
    for name, params in calls:
        if name in ("GenerateDataKey", "Decrypt"):
            # Coarse context: the path is bound by the header MAC, not KMS.
            assert params["EncryptionContext"] == {"team": "sales"}
        if name == "Decrypt":
            assert params["KeyId"] == entry.key_id  # always pinned
    assert b"secret rows" not in memfs.cat_file("/lake/a.bin")


def test_strict_mode_never_sends_foreign_entries_to_kms(kms, memfs):
    kms.create_key(alias="a")
    kms.create_key(alias="b")
    _efs(memfs, key="aws-kms://alias/a").pipe_file("/x", b"data")
    reader = _efs(memfs, key="aws-kms://alias/b")
    calls = _record_calls(reader.keyring.provider("aws-kms"))
    with pytest.raises(NoUsableKeyError):
        reader.cat_file("/x")
    assert "Decrypt" not in [c[0] for c in calls]
    assert _efs(memfs, key="aws-kms://alias/b", decrypt_keys=["aws-kms://alias/a"]).cat_file("/x") == b"data"


def test_discovery_mode_allow_list(kms, memfs):
    a = kms.create_key(alias="a")
    kms.create_key(alias="b")
    _efs(memfs, key="aws-kms://alias/a").pipe_file("/x", b"data")

    def reader(**opts):
        return EncryptedFileSystem(fs=memfs, key="aws-kms://alias/b", skip_instance_cache=True,
                                   providers={"aws-kms": {"region_name": REGION, "discovery": True, **opts}})

    assert reader(discovery_accounts=[ACCOUNT]).cat_file("/x") == b"data"
    assert reader(discovery_key_arns=[a.key_id]).cat_file("/x") == b"data"
    with pytest.raises(NoUsableKeyError):
        reader(discovery_accounts=["999999999999"]).cat_file("/x")
    with pytest.raises(NoUsableKeyError):
        reader(discovery_accounts=[ACCOUNT], discovery_partition="aws-cn").cat_file("/x")
    with pytest.raises(ConfigurationError):
        AwsKmsProvider(discovery=True)  # discovery always needs an allow-list
    with pytest.raises(ConfigurationError):
        AwsKmsProvider(discovery_accounts=[ACCOUNT])  # and must be asked for
    with pytest.raises(ConfigurationError):
        AwsKmsProvider(discovery=True, discovery_key_arns=["alias/a"])


def test_multi_key_object_readable_with_either_key(kms, memfs, encfs_home):
    kms.create_key(alias="lake")
    writer = _efs(memfs, key=["aws-kms://alias/lake", "local://escrow"], keystore=str(encfs_home))
    writer.keyring.provider("local").keystore.create_key(alias="escrow")
    writer.pipe_file("/m", b"both")
    assert [w.provider for w in writer.header("/m").wrapped_keys] == ["aws-kms", "local"]
    assert _efs(memfs, key="aws-kms://alias/lake").cat_file("/m") == b"both"
    # Reader with only the escrow key: KMS is never asked.
    local_only = EncryptedFileSystem(fs=memfs, key="local://escrow", keystore=str(encfs_home), skip_instance_cache=True)
    assert local_only.cat_file("/m") == b"both"


def test_keys_in_two_regions(aws_env, memfs):
    with mock_aws():
        east = AwsKmsProvider(region_name="us-east-1").create_key()
        west = AwsKmsProvider(region_name="eu-west-1").create_key()
        assert parse_key_arn(west.key_id)["region"] == "eu-west-1"
        _efs(memfs, key=[f"aws-kms://{east.key_id}", f"aws-kms://{west.key_id}"]).pipe_file("/r", b"regions")
        # A reader configured in us-east-1 decrypts the eu-west-1 entry in eu-west-1.
        reader = _efs(memfs, key=f"aws-kms://{west.key_id}")
        assert reader.cat_file("/r") == b"regions"
        assert set(reader.keyring.provider("aws-kms")._clients) == {"eu-west-1"}


def test_wrong_context_and_wrong_key_fail_closed(kms):
    k1 = kms.create_key()
    k2 = kms.create_key()
    dek, entry = kms.generate_data_key(KeyRef("aws-kms", k1.key_id), {"team": "a"})
    assert len(dek) == 32 and kms.unwrap(entry, {"team": "a"}) == dek
    with pytest.raises(IntegrityError) as exc:
        kms.unwrap(entry, {"team": "b"})
    assert isinstance(exc.value.__cause__, ClientError)
    # An entry relabelled with another key id: pinned Decrypt refuses it.
    with pytest.raises((IntegrityError, AccessDeniedError)):
        kms.unwrap(WrappedKey("aws-kms", k2.key_id, "", entry.wrapped), {"team": "a"})
    with pytest.raises(IntegrityError):
        kms.unwrap(WrappedKey("aws-kms", "alias/not-an-arn", "", entry.wrapped), {"team": "a"})


def test_admin_operations(kms):
    info = kms.create_key(alias="admin", description="for admins", tags={"owner": "data"})
    ref = KeyRef("aws-kms", "alias/admin")
    assert info.aliases == ["alias/admin"] and info.tags == {"owner": "data"}
    assert info.description == "for admins" and info.state == "Enabled" and info.extra["kind"] == "customer"
    assert kms.resolve(ref) == info.key_id
    kms.disable_key(ref)
    assert kms.describe(ref).state == "Disabled"
    kms.enable_key(ref)
    assert kms.describe(ref).state == "Enabled"
    assert kms.rotation_status(ref)["automatic"] is False
    assert kms.describe(ref).extra["rotation_enabled"] is False
    assert kms.set_rotation(ref, True)["automatic"] is True
    assert kms.describe(ref).extra["rotation_enabled"] is True
    assert kms.rotate_key(ref).key_id == info.key_id
    assert kms.schedule_deletion(ref, 7).state == "PendingDeletion"
    assert kms.cancel_deletion(ref).state == "Disabled"
    with pytest.raises(ConfigurationError):
        kms.schedule_deletion(ref, 3)
    kms.tag_key(ref, {"cost": "1"})
    assert kms.describe(ref).tags == {"owner": "data", "cost": "1"}
    kms.untag_key(ref, ["cost"])
    assert kms.describe(ref).tags == {"owner": "data"}
    other = kms.create_key()
    kms.set_alias("admin", KeyRef("aws-kms", other.key_id))  # re-point an existing alias
    assert kms.resolve(ref) == other.key_id
    kms.set_alias("alias/second", KeyRef("aws-kms", other.key_id))
    assert kms.describe(KeyRef("aws-kms", other.key_id)).aliases == ["alias/admin", "alias/second"]
    kms.delete_alias("admin")
    with pytest.raises(KeyNotFoundError) as exc:
        kms.resolve(ref)
    assert exc.value.operation == "resolve" and "alias/admin" in str(exc.value)
    assert {i.key_id for i in kms.list_keys()} == {info.key_id, other.key_id}


def test_botocore_debug_logs_never_show_data_keys(kms, caplog):
    import base64
    import logging

    info = kms.create_key()
    with caplog.at_level(logging.DEBUG, logger="botocore"):
        dek, entry = kms.generate_data_key(KeyRef("aws-kms", info.key_id), {"t": "1"})
        assert kms.unwrap(entry, {"t": "1"}) == dek
        kms.wrap(KeyRef("aws-kms", info.key_id), dek, {"t": "1"})
    text = caplog.text
    assert "Response body" in text or "withheld" in text  # botocore did log bodies
    assert "withheld" in text
    for form in (base64.b64encode(dek).decode(), dek.hex(), repr(dek)):
        assert form not in text


def test_resolve_is_cached_with_ttl(aws_env):
    now = [0.0]
    with mock_aws():
        p = AwsKmsProvider(region_name=REGION, resolve_ttl=60, clock=lambda: now[0])
        p.create_key(alias="c")
        calls = _record_calls(p)
        for _ in range(3):
            p.resolve(KeyRef("aws-kms", "alias/c"))
        assert [c[0] for c in calls] == ["DescribeKey"]
        now[0] = 61.0
        p.resolve(KeyRef("aws-kms", "alias/c"))
        assert [c[0] for c in calls] == ["DescribeKey", "DescribeKey"]


def test_provider_refuses_pickle_and_fs_options_hold_no_secrets(kms, memfs):
    with pytest.raises(TypeError):
        pickle.dumps(kms)
    efs = EncryptedFileSystem(target_protocol="memory", key="aws-kms://alias/x",
                              providers={"aws-kms": {"region_name": REGION, "endpoint_url": "http://127.0.0.1:1"}})
    clone = pickle.loads(pickle.dumps(efs))
    assert clone.keyring.read_refs == efs.keyring.read_refs
    text = efs.to_json()
    assert "testing" not in text and "aws-kms://alias/x" in text
    assert repr(AwsKmsProvider(region_name=REGION, endpoint_url="http://h")) == (
        "AwsKmsProvider(region_name='us-east-1', endpoint_url='http://h')")


def test_unknown_profile_is_a_configuration_error(aws_env):
    provider = AwsKmsProvider(region_name=REGION, profile_name="encfs-no-such-profile")
    with pytest.raises(ConfigurationError, match="cannot create an AWS KMS client"):
        provider.resolve(KeyRef("aws-kms", "alias/x"))


def test_unreachable_service_is_unavailable_after_retries(aws_env):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    provider = AwsKmsProvider(region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=3,
                              sleep=sleeps.append, connect_timeout=2)
    with pytest.raises(KeyUnavailableError) as exc:
        provider.unwrap(ENTRY, {})
    assert len(sleeps) == 2 and exc.value.operation == "unwrap" and ARN in str(exc.value)
    assert exc.value.key == f"aws-kms://{ARN}" and exc.value.__cause__ is not None


# -- error translation with stubbed responses ----------------------------------------------
@pytest.fixture
def stubbed(aws_env):
    client = boto3.client("kms", region_name=REGION)
    sleeps: list[float] = []
    provider = AwsKmsProvider(region_name=REGION, kms_client=client, sleep=sleeps.append, max_attempts=3)
    with Stubber(client) as stub:
        yield provider, stub, sleeps
        stub.assert_no_pending_responses()


ENTRY = WrappedKey("aws-kms", ARN, "", b"\x01" * 180)

TRANSLATION = [
    ("AccessDeniedException", AccessDeniedError),
    ("DisabledException", KeyStateError),
    ("KMSInvalidStateException", KeyStateError),  # pending deletion
    ("NotFoundException", KeyNotFoundError),
    ("KeyUnavailableException", KeyUnavailableError),
    ("InvalidKeyUsageException", KeyStateError),
    ("UnrecognizedClientException", AccessDeniedError),
    ("SomethingNewException", KeyServiceError),
]


@pytest.mark.parametrize("code,cls", TRANSLATION)
def test_decrypt_error_translation(stubbed, code, cls):
    provider, stub, sleeps = stubbed
    stub.add_client_error("decrypt", service_error_code=code, service_message=f"{ARN} says no", http_status_code=400,
                          expected_params={"CiphertextBlob": ENTRY.wrapped, "KeyId": ARN, "EncryptionContext": {"t": "1"}})
    with pytest.raises(cls) as exc:
        provider.unwrap(ENTRY, {"t": "1"})
    err = exc.value
    assert type(err) is cls
    assert err.key == f"aws-kms://{ARN}" and err.operation == "unwrap"
    assert ARN in str(err) and "Decrypt" in str(err) and code in str(err)
    assert isinstance(err.__cause__, ClientError)
    assert sleeps == []  # not retryable


@pytest.mark.parametrize("code,cls", [("DisabledException", KeyStateError), ("AccessDeniedException", AccessDeniedError),
                                      ("NotFoundException", KeyNotFoundError)])
def test_generate_data_key_error_translation(stubbed, code, cls):
    provider, stub, _ = stubbed
    stub.add_client_error("generate_data_key", service_error_code=code, http_status_code=400)
    with pytest.raises(cls) as exc:
        provider.generate_data_key(KeyRef("aws-kms", "alias/lake"), {})
    assert exc.value.operation == "generate_data_key" and exc.value.key == "aws-kms://alias/lake"
    assert "GenerateDataKey" in str(exc.value)


def test_invalid_ciphertext_is_integrity_error(stubbed):
    provider, stub, _ = stubbed
    stub.add_client_error("decrypt", service_error_code="InvalidCiphertextException", http_status_code=400)
    with pytest.raises(IntegrityError) as exc:
        provider.unwrap(ENTRY, {})
    assert str(exc.value) == IntegrityError.MESSAGE
    assert isinstance(exc.value.__cause__, ClientError)


def test_throttling_retries_with_backoff_then_succeeds(stubbed):
    provider, stub, sleeps = stubbed
    stub.add_client_error("decrypt", service_error_code="ThrottlingException", http_status_code=400)
    stub.add_client_error("decrypt", service_error_code="KMSInternalException", http_status_code=500)
    stub.add_response("decrypt", {"KeyId": ARN, "Plaintext": b"k" * 32}, {"CiphertextBlob": ANY, "KeyId": ARN})
    assert provider.unwrap(ENTRY, {}) == b"k" * 32
    assert len(sleeps) == 2 and all(0 <= s <= provider.backoff_max for s in sleeps)


def test_throttling_exhausted_is_unavailable(stubbed):
    provider, stub, sleeps = stubbed
    for _ in range(3):
        stub.add_client_error("decrypt", service_error_code="ThrottlingException", http_status_code=400)
    with pytest.raises(KeyUnavailableError) as exc:
        provider.unwrap(ENTRY, {})
    assert len(sleeps) == 2 and "retries exhausted" in str(exc.value)
    assert exc.value.key == f"aws-kms://{ARN}"


def test_decrypt_answer_for_another_key_is_rejected(stubbed):
    provider, stub, _ = stubbed
    other = ARN.replace("1111", "9999")
    stub.add_response("decrypt", {"KeyId": other, "Plaintext": b"k" * 32})
    with pytest.raises(IntegrityError):
        provider.unwrap(ENTRY, {})
    stub.add_response("decrypt", {"KeyId": ARN, "Plaintext": b"short"})
    with pytest.raises(IntegrityError):
        provider.unwrap(ENTRY, {})


def test_keyring_reports_key_state_not_no_usable_key(stubbed):
    """A disabled KMS key surfaces as KeyStateError from a whole read path."""
    provider, stub, _ = stubbed
    from encfs.format import HEADER_REGION, encrypt_object, parse_header

    blob = encrypt_object(dek=b"d" * 32, object_id=b"o" * 32, context={"encfs:path": "p"},
                          wrapped_keys=[ENTRY], plaintext=b"x")
    header = parse_header(blob[:HEADER_REGION])
    ring = Keyring(f"aws-kms://{ARN}", providers={"aws-kms": provider})
    stub.add_client_error("decrypt", service_error_code="DisabledException", http_status_code=400)
    with pytest.raises(KeyStateError) as exc:
        ring.unwrap(header, "p")
    assert exc.value.operation == "unwrap" and re.search("disabled", str(exc.value))

"""The PKCS#11 provider against a throwaway SoftHSM2 token (tests/_softhsm.py):
root keys that cannot leave the token, filesystem round trips, multi-key
objects, reconnects, error translation, secret-free options and the
``encfs hsm init`` command.  Provider-independent behaviour is in
test_provider_contract.py."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import stat
import subprocess
import sys
import threading
from dataclasses import replace

import fsspec
import pytest
from _softhsm import PIN_TOKEN, TOKEN, softhsm, unique_label

from encfs import EncryptedFileSystem
from encfs.errors import (
    AccessDeniedError,
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyUnavailableError,
    NoUsableKeyError,
)
from encfs.providers import KeyRef

CTX = {"dataset": "sales"}


def _provider(**options):
    from encfs.providers.pkcs11 import Pkcs11Provider

    return Pkcs11Provider(**options)


@pytest.fixture
def p11():
    import pkcs11

    return pkcs11


@pytest.fixture
def session(hsm, hsm_key, p11):
    """A session of our own on the shared token.  It is opened without a PIN:
    PKCS#11 login is per application and token, and the provider's pool has
    logged this process in; closing a PIN-less session does not log out."""
    token = p11.lib(hsm.module).get_token(token_label=TOKEN)
    s = token.open(rw=True)
    yield s
    s.close()


def _root_objects(session, p11, uri: str) -> list:
    label = uri.rsplit("/", 1)[1]
    return list(session.get_objects({p11.Attribute.CLASS: p11.ObjectClass.SECRET_KEY, p11.Attribute.LABEL: label}))


# -- the root key never leaves the token -----------------------------------------
class TestRootKeyStaysInToken:
    def test_attributes(self, session, p11, hsm_key):
        A = p11.Attribute
        provider = _provider()
        provider.rotate_key(KeyRef.parse(hsm_key))  # every version, not just the first
        objs = _root_objects(session, p11, hsm_key)
        assert len(objs) == 2
        for key in objs:
            assert key[A.KEY_TYPE] == p11.KeyType.AES and key[A.VALUE_LEN] == 32
            assert key[A.TOKEN] is True and key[A.PRIVATE] is True
            assert key[A.SENSITIVE] is True and key[A.ALWAYS_SENSITIVE] is True
            assert key[A.EXTRACTABLE] is False and key[A.NEVER_EXTRACTABLE] is True
            assert key[A.LOCAL] is True  # generated inside the token, never imported
            assert key[A.WRAP] is False and key[A.UNWRAP] is False and key[A.DERIVE] is False
            assert key[A.MODIFIABLE] is False
        info = provider.describe(KeyRef.parse(hsm_key))
        assert info.extra["extractable"] is False and info.extra["never_extractable"] is True
        assert info.extra["key_type"] == "AES-256"

    def test_value_cannot_be_read(self, session, p11, hsm_key):
        for key in _root_objects(session, p11, hsm_key):
            with pytest.raises(p11.exceptions.AttributeSensitive):
                key[p11.Attribute.VALUE]

    def test_key_cannot_be_wrapped_out(self, session, p11, hsm_key):
        A, M = p11.Attribute, p11.Mechanism
        wrapping = session.generate_key(p11.KeyType.AES, 256, template={A.WRAP: True, A.EXTRACTABLE: True})
        (root,) = _root_objects(session, p11, hsm_key)
        for mech in (M.AES_KEY_WRAP, M.AES_KEY_WRAP_PAD):
            with pytest.raises(p11.exceptions.KeyUnextractable):
                wrapping.wrap_key(root, mechanism=mech)

    def test_attributes_cannot_be_relaxed(self, session, p11, hsm_key):
        A = p11.Attribute
        (root,) = _root_objects(session, p11, hsm_key)
        for attr, value in ((A.EXTRACTABLE, True), (A.SENSITIVE, False)):
            with pytest.raises(p11.exceptions.PKCS11Error):
                root[attr] = value
        # nor through a copy with different attributes
        with pytest.raises(p11.exceptions.PKCS11Error):
            root.copy({A.EXTRACTABLE: True})
        assert root[A.EXTRACTABLE] is False and root[A.SENSITIVE] is True


# -- through the filesystem ----------------------------------------------------------
def test_round_trip_enc_memory_url(hsm, hsm_key):
    path = f"enc::memory://hsm-{unique_label()}/data.bin"
    data = os.urandom(300_000)
    with fsspec.open(path, "wb", enc={"key": hsm_key}) as f:
        f.write(data)
    raw = fsspec.filesystem("memory").cat_file(path[len("enc::memory://"):])
    assert raw[:4] == b"ENCF" and data[:64] not in raw
    with fsspec.open(path, "rb", enc={"key": hsm_key}) as f:
        f.seek(123_456)
        assert f.read(1000) == data[123_456:124_456]
    # the header's wrapped entry names the token key and its version
    from encfs.format import HEADER_REGION, parse_header

    (entry,) = parse_header(raw[:HEADER_REGION]).wrapped_keys
    assert (entry.provider, entry.key_id, entry.version) == ("pkcs11", hsm_key[len("pkcs11://"):], "1")


def test_round_trip_enc_file_url(hsm, hsm_key, tmp_path):
    target = tmp_path / "lake" / "part-0.bin"
    data = os.urandom(200_000)
    url = f"enc::file://{target}"
    with fsspec.open(url, "wb", enc={"key": hsm_key}) as f:
        f.write(data)
    assert target.read_bytes()[:4] == b"ENCF" and data[:64] not in target.read_bytes()
    with fsspec.open(url, "rb", enc={"key": hsm_key}) as f:
        assert f.read() == data
    # a rotated key keeps reading old objects and writes new ones under v2
    _provider().rotate_key(KeyRef.parse(hsm_key))
    with fsspec.open(url, "rb", enc={"key": hsm_key}) as f:
        assert f.read() == data
    fs = EncryptedFileSystem(target_protocol="file", key=hsm_key, skip_instance_cache=True)
    fs.pipe_file(str(tmp_path / "new.bin"), b"after rotation")
    assert fs.cat_file(str(tmp_path / "new.bin")) == b"after rotation"


def test_filesystem_options_pickle_and_json_hold_no_pin(hsm, hsm_key, tmp_path):
    fs = EncryptedFileSystem(target_protocol="file", key=hsm_key, skip_instance_cache=True,
                             providers={"pkcs11": {"module": hsm.module}})
    p = str(tmp_path / "x.bin")
    fs.pipe_file(p, b"secret rows")
    pin = hsm.pins[TOKEN]
    blob = pickle.dumps(fs)
    assert pin.encode() not in blob and pin not in fs.to_json() and pin not in repr(fs)
    assert pin not in repr(fs.keyring.provider("pkcs11"))
    assert pickle.loads(blob).cat_file(p) == b"secret rows"


def test_pin_in_options_is_refused(hsm):
    with pytest.raises(ConfigurationError) as err:
        _provider(pin="1234")
    assert "ENCFS_PKCS11_PIN" in str(err.value) and "1234" not in str(err.value)
    with pytest.raises(ConfigurationError):
        _provider(user_pin="1234")
    with pytest.raises(ConfigurationError):
        _provider(slot=3)


# -- multi-key objects ----------------------------------------------------------------
def test_object_under_hsm_and_local_key_opens_with_either(hsm, hsm_key, memfs, tmp_path, monkeypatch):
    home = str(tmp_path / "keystore")
    writer = EncryptedFileSystem(fs=memfs, key=[hsm_key, "local://default"], keystore=home, skip_instance_cache=True)
    data = os.urandom(100_000)
    writer.pipe_file("/both/obj.bin", data)

    hsm_only = EncryptedFileSystem(fs=memfs, key=hsm_key, keystore=str(tmp_path / "empty"), skip_instance_cache=True)
    assert hsm_only.cat_file("/both/obj.bin") == data
    local_only = EncryptedFileSystem(fs=memfs, key="local://default", keystore=home, skip_instance_cache=True)
    assert local_only.cat_file("/both/obj.bin") == data
    # allowed by decrypt_keys alone, while writing under another key
    reader = EncryptedFileSystem(fs=memfs, key="local://other", decrypt_keys=[hsm_key],
                                 keystore=str(tmp_path / "k3"), skip_instance_cache=True)
    assert reader.cat_file("/both/obj.bin") == data

    # With no HSM configured at all, the local entry still opens it.
    monkeypatch.delenv("ENCFS_PKCS11_MODULE")
    no_hsm = EncryptedFileSystem(fs=memfs, key=[hsm_key, "local://default"], keystore=home, skip_instance_cache=True)
    assert no_hsm.cat_file("/both/obj.bin") == data
    # ...and an HSM key alone, without the HSM, is a clear key error.
    with pytest.raises((ConfigurationError, NoUsableKeyError)):
        EncryptedFileSystem(fs=memfs, key=hsm_key, keystore=str(tmp_path / "k4"),
                            skip_instance_cache=True).cat_file("/both/obj.bin")


def test_allow_list_is_by_configured_key(hsm, hsm_key):
    provider = _provider()
    other = provider.create_key(alias=unique_label()).uri
    wrapped = provider.wrap(KeyRef.parse(hsm_key), os.urandom(32), CTX)
    assert provider.allows(wrapped, [KeyRef.parse(hsm_key)])
    assert not provider.allows(wrapped, [KeyRef.parse(other)])
    assert not provider.allows(wrapped, [KeyRef.parse("local://default")])


# -- wrapped entries ---------------------------------------------------------------------
def test_wrapped_entry_checks(hsm, hsm_key):
    provider = _provider()
    dek = os.urandom(32)
    wrapped = provider.wrap(KeyRef.parse(hsm_key), dek, CTX)
    assert wrapped.version == "1" and len(wrapped.wrapped) == 61 and wrapped.wrapped[0] == 1
    for version in ("01", "0", "x", "", "1 ", "٣"):
        with pytest.raises(IntegrityError):
            provider.unwrap(replace(wrapped, version=version), CTX)
    with pytest.raises(KeyNotFoundError) as err:
        provider.unwrap(replace(wrapped, version="7"), CTX)
    assert "version 7" in str(err.value) and err.value.key == hsm_key
    # a version that exists but is not the one used: the AAD binds the version
    provider.rotate_key(KeyRef.parse(hsm_key))
    with pytest.raises(IntegrityError):
        provider.unwrap(replace(wrapped, version="2"), CTX)
    assert provider.unwrap(wrapped, CTX) == dek
    for key_id in ("nonsense", f"{TOKEN}/"):
        with pytest.raises(IntegrityError):
            provider.unwrap(replace(wrapped, key_id=key_id), CTX)


def test_create_rotate_describe_list(hsm):
    provider = _provider()
    label = unique_label("admin")
    info = provider.create_key(alias=label)  # bare label: the default token (ENCFS_PKCS11_TOKEN)
    assert info.uri == f"pkcs11://{TOKEN}/{label}" and info.versions == ["1"]
    with pytest.raises(ConfigurationError):
        provider.create_key(alias=f"pkcs11://{TOKEN}/{label}")  # exists already
    with pytest.raises(ConfigurationError):
        provider.create_key(alias=unique_label(), description="x")
    ref = KeyRef.parse(info.uri)
    assert provider.rotate_key(ref).versions == ["1", "2"]
    assert provider.rotate_key(ref).current_version == "3"
    assert provider.rotation_status(ref)["current_version"] == "3"
    assert info.uri in {k.uri for k in provider.list_keys()}
    assert provider.resolve(ref) == f"{TOKEN}/{label}"
    with pytest.raises(ConfigurationError):
        provider.disable_key(ref)  # no key states in PKCS#11: says so, never pretends
    with pytest.raises(ConfigurationError):
        provider.describe(KeyRef.parse("pkcs11://only-a-token"))


# -- sessions: pool, reconnects, threads ------------------------------------------------
def _pool(provider):
    from encfs.providers.pkcs11 import _module

    return _module(provider.module_path).pool(TOKEN, provider.max_sessions)


# python-pkcs11 finalises an interrupted object search from __del__, on a
# session that is already gone; it reports that as an unraisable exception.
_quiet_search_finaliser = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_quiet_search_finaliser
def test_reconnects_after_sessions_are_closed(hsm, hsm_key):
    provider = _provider()
    ref = KeyRef.parse(hsm_key)
    wrapped = provider.wrap(ref, b"k" * 32, CTX)
    pool = _pool(provider)
    generation = pool.generation
    # Close every session of the pool behind its back; the anchor's close
    # logs the whole application out of the token.
    for lease in list(pool._idle):
        lease.session.close()
    pool._anchor.close()
    assert provider.unwrap(wrapped, CTX) == b"k" * 32
    assert provider.unwrap(provider.wrap(ref, b"j" * 32, CTX), CTX) == b"j" * 32
    assert pool.generation == generation + 1  # exactly one reconnect


def test_reconnects_after_logout_of_live_sessions(hsm, hsm_key):
    provider = _provider()
    ref = KeyRef.parse(hsm_key)
    wrapped = provider.wrap(ref, b"k" * 32, CTX)
    pool = _pool(provider)
    assert pool._idle, "the pool keeps its sessions between operations"
    for lease in pool._idle:
        lease.keys.clear()  # make the next operation look its key up again
    generation = pool.generation
    # Only the login goes: the idle sessions stay open but see no private object.
    pool._anchor.close()
    assert provider.unwrap(wrapped, CTX) == b"k" * 32
    assert pool.generation == generation + 1


def test_missing_key_does_not_reconnect(hsm, hsm_key):
    provider = _provider()
    provider.describe(KeyRef.parse(hsm_key))
    pool = _pool(provider)
    generation = pool.generation
    for _ in range(3):
        with pytest.raises(KeyNotFoundError):
            provider.describe(KeyRef("pkcs11", f"{TOKEN}/{unique_label('absent')}"))
    assert pool.generation == generation  # nobody was logged out for it


@_quiet_search_finaliser
def test_reconnects_after_module_reinitialisation(hsm, hsm_key, p11):
    provider = _provider()
    ref = KeyRef.parse(hsm_key)
    wrapped = provider.wrap(ref, b"k" * 32, CTX)
    pool = _pool(provider)
    generation = pool.generation
    lib = p11.lib(hsm.module)
    lib.reinitialize()  # C_Finalize + C_Initialize: every session and login is gone
    assert provider.unwrap(wrapped, CTX) == b"k" * 32
    assert pool.generation == generation + 1
    lib.finalize()  # and left finalised: the provider initialises it again
    assert provider.unwrap(wrapped, CTX) == b"k" * 32
    assert pool.generation == generation + 2 and lib.initialized


def test_pool_bounds_sessions_under_threads(hsm, hsm_key):
    provider = _provider(max_sessions=2)
    ref = KeyRef.parse(hsm_key)
    pool = _pool(provider)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                dek = os.urandom(32)
                assert provider.unwrap(provider.wrap(ref, dek, CTX), CTX) == dek
                assert pool._open <= pool.max_sessions
        except BaseException as exc:  # noqa: BLE001  (reported below, in the test thread)
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_its_own_sessions(hsm, hsm_key):
    provider = _provider()
    ref = KeyRef.parse(hsm_key)
    wrapped = provider.wrap(ref, b"f" * 32, CTX)  # the parent has a pool and a login
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must re-initialise the module, log in and unwrap by itself
        status = 1
        try:
            os.close(read_end)
            from encfs.providers import pkcs11_token as module  # owns the pools

            fresh = not module._MODULES  # none of the parent's pools, sessions or locks
            ok = fresh and provider.unwrap(wrapped, CTX) == b"f" * 32
            os.write(write_end, b"ok" if ok else b"wrong")
            status = 0
        except BaseException as exc:  # noqa: BLE001  (reported to the parent through the pipe)
            os.write(write_end, type(exc).__name__.encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert answer == b"ok" and os.WEXITSTATUS(status) == 0
    assert provider.unwrap(wrapped, CTX) == b"f" * 32  # the parent's sessions are untouched


# -- errors at the boundary ------------------------------------------------------------
def test_pin_errors_name_the_token_never_the_pin(hsm, monkeypatch, tmp_path):
    # All steps on the second token, which no other test logs in to: login
    # state is per process and token, so the order of these steps matters.
    provider = _provider()
    ref = KeyRef("pkcs11", f"{PIN_TOKEN}/{unique_label()}")
    monkeypatch.delenv("ENCFS_PKCS11_PIN")
    with pytest.raises(AccessDeniedError) as err:
        provider.describe(ref)
    assert "ENCFS_PKCS11_PIN" in str(err.value) and PIN_TOKEN in str(err.value)

    wrong = "wrong-pin-8812"
    monkeypatch.setenv("ENCFS_PKCS11_PIN", wrong)
    with pytest.raises(AccessDeniedError) as err:
        provider.describe(ref)
    text = f"{err.value!s} {err.value!r} {err.value.args} {err.value.key}"
    assert PIN_TOKEN in text and "PIN" in text and wrong not in text
    assert err.value.__cause__ is not None  # the PKCS#11 error is kept as the cause

    monkeypatch.delenv("ENCFS_PKCS11_PIN")
    pin_file = tmp_path / "pin"
    pin_file.write_text(hsm.pins[PIN_TOKEN] + "\n")
    monkeypatch.setenv("ENCFS_PKCS11_PIN_FILE", str(pin_file))
    with pytest.raises(KeyNotFoundError) as err:  # logged in now: the key is what is missing
        provider.describe(ref)
    assert ref.name.split("/")[1] in str(err.value) and PIN_TOKEN in str(err.value)
    info = provider.create_key(alias=ref.name)
    assert provider.unwrap(provider.wrap(KeyRef.parse(info.uri), b"p" * 32, {}), {}) == b"p" * 32


def test_missing_token(hsm):
    with pytest.raises(KeyUnavailableError) as err:
        _provider().wrap(KeyRef("pkcs11", "no-such-token/k"), os.urandom(32), CTX)
    assert "no-such-token" in str(err.value) and err.value.key == "pkcs11://no-such-token/k"


def test_translation_table(hsm, p11):
    from encfs.providers.pkcs11 import KeyName, translate

    name = KeyName("tok", "lbl")
    cases = {
        p11.exceptions.PinLocked(): (AccessDeniedError, "locked"),
        p11.exceptions.PinIncorrect(): (AccessDeniedError, "rejected the user PIN"),
        p11.exceptions.PinExpired(): (AccessDeniedError, "expired"),
        p11.exceptions.TokenNotPresent(): (KeyUnavailableError, "not present"),
        p11.exceptions.DeviceRemoved(): (KeyUnavailableError, "not present"),
        p11.exceptions.DeviceError(): (KeyUnavailableError, "DeviceError"),
    }
    for exc, (cls, words) in cases.items():
        err = translate(exc, name=name, token="tok", module="/m.so", operation="unwrap")
        assert type(err) is cls and words in str(err) and "tok" in str(err)
        assert err.key == "pkcs11://tok/lbl" and err.operation == "unwrap"


def test_configuration_errors(hsm, monkeypatch):
    monkeypatch.delenv("ENCFS_PKCS11_MODULE")
    with pytest.raises(ConfigurationError, match="ENCFS_PKCS11_MODULE"):
        _provider()
    with pytest.raises(ConfigurationError, match="does not exist"):
        _provider(module="/nonexistent/libnothing.so")
    monkeypatch.setitem(sys.modules, "pkcs11", None)  # as if python-pkcs11 were not installed
    with pytest.raises(ConfigurationError, match=r"pip install encfs\[pkcs11\]"):
        _provider(module=hsm.module)


# -- command line --------------------------------------------------------------------------
def test_keys_commands_with_pkcs11_keys(hsm, tmp_path):
    from click.testing import CliRunner

    from encfs.cli.main import _load_commands, cli

    _load_commands()
    run = CliRunner().invoke
    label = unique_label("cli")
    uri = f"pkcs11://{TOKEN}/{label}"
    out = run(cli, ["keys", "create", "--provider", "pkcs11", "--alias", f"{TOKEN}/{label}", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["uri"] == uri
    out = run(cli, ["keys", "rotate", uri])
    assert out.exit_code == 0, out.output
    out = run(cli, ["keys", "describe", uri, "--json"])
    assert out.exit_code == 0, out.output
    desc = json.loads(out.output)
    assert desc["versions"] == ["1", "2"] and desc["extractable"] is False and desc["sensitive"] is True
    out = run(cli, ["keys", "list", "--provider", "pkcs11", "--json"])
    assert out.exit_code == 0 and uri in out.output
    assert hsm.pins[TOKEN] not in out.output


def test_hsm_check(hsm, hsm_key, session, p11):
    from click.testing import CliRunner

    from encfs.cli.main import _load_commands, cli

    _load_commands()
    out = CliRunner().invoke(cli, ["hsm", "check", hsm_key])
    assert out.exit_code == 0, out.output
    assert "round trip:       ok (version 1)" in out.output and "never extractable" in out.output

    # A key provisioned by other tools with the encfs naming but a weak
    # template: usable, but the check refuses it (and describe says why).
    A = p11.Attribute
    label = unique_label("weak")
    session.generate_key(p11.KeyType.AES, 256, label=label, id=(1).to_bytes(4, "big"), store=True,
                         template={A.PRIVATE: True, A.SENSITIVE: False, A.EXTRACTABLE: True})
    weak = f"pkcs11://{TOKEN}/{label}"
    assert _provider().describe(KeyRef.parse(weak)).extra["extractable"] is True
    # rotating adds a strong version 2, but version 1 can still leave the token
    assert _provider().rotate_key(KeyRef.parse(weak)).extra["extractable"] is True
    out = CliRunner().invoke(cli, ["hsm", "check", weak])
    assert out.exit_code != 0 and isinstance(out.exception, ConfigurationError)
    assert "extractable=True" in str(out.exception) and "sensitive=False" in str(out.exception)
    out = CliRunner().invoke(cli, ["hsm", "check", "local://default"])
    assert isinstance(out.exception, ConfigurationError)


# -- encfs hsm init ----------------------------------------------------------------------
def test_hsm_init_creates_a_usable_token(tmp_path):
    softhsm()  # skips when SoftHSM2 is missing
    directory = tmp_path / "try-hsm"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENCFS_PKCS11", "SOFTHSM2"))}
    cmd = [sys.executable, "-c", "from encfs.cli import main; main()", "hsm", "init", str(directory),
           "--token", "demo", "--key", "lake"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    exports = dict(shlex.split(line[len("export "):])[0].split("=", 1) for line in proc.stdout.splitlines())
    assert set(exports) == {"SOFTHSM2_CONF", "ENCFS_PKCS11_MODULE", "ENCFS_PKCS11_TOKEN", "ENCFS_PKCS11_PIN_FILE"}
    pin_file = directory / "user.pin"
    pin = pin_file.read_text().strip()
    assert stat.S_IMODE(pin_file.stat().st_mode) == 0o600 and len(pin) >= 16
    assert pin not in proc.stdout + proc.stderr
    assert "pkcs11://demo/lake" in proc.stderr

    # A fresh process with only the printed environment round-trips an object.
    script = (
        "import json, os, sys\n"
        "from encfs import EncryptedFileSystem\n"
        "fs = EncryptedFileSystem(target_protocol='file', key='pkcs11://demo/lake', skip_instance_cache=True)\n"
        "p = sys.argv[1]\n"
        "fs.pipe_file(p, b'hello hsm')\n"
        "print(json.dumps({'back': fs.cat_file(p).decode(), 'raw': open(p, 'rb').read(4).decode()}))\n"
    )
    run_env = {**env, **exports}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "obj.bin")], env=run_env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"back": "hello hsm", "raw": "ENCF"}

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1 and "not empty" in again.stderr

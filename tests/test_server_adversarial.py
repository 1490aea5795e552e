"""The key server attacked over HTTP by someone holding a low-privilege
principal's credentials, or none: SigV4 tricks, malformed and over-limit
input, authorisation bypasses (aliases, ReEncrypt, grants creating grants,
retiring others' grants, policy conditions), key states, ciphertext fuzzing,
secrets at rest and in logs, one audit record per request and its tamper
evidence, and a 500 that tells the client nothing.  One server per module."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import http.client
import json
import logging
import re
import shutil
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("boto3")
from _kms_server import ACCOUNT, REGION, arn, audit_lines, client, make_config
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encfs.server.app import ServerThread

#: mallory's identity permissions: alias operations on alias/adv-* only, so the
#: attacks on alias/adv-* names below meet the key policies (and a name outside
#: it, her identity permissions).
MALLORY_ACTIONS = ("kms:CreateAlias:alias/adv-*", "kms:UpdateAlias:alias/adv-*", "kms:DeleteAlias:alias/adv-*")
ADMIN_STMT = {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": arn("admin")}, "Action": "kms:*",
              "Resource": "*"}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.dumps({"event": record.getMessage(), **getattr(record, "fields", {})}))


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    data = tmp_path_factory.mktemp("kms-adv")
    cfg = make_config(data, log_requests=True)
    cfg.principals = [dataclasses.replace(p, account_actions=MALLORY_ACTIONS) if p.name == "mallory" else p
                      for p in cfg.principals]
    capture = _Capture()
    logger = logging.getLogger("encfs.server")
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    thread = ServerThread(cfg).start()
    thread.cfg = cfg
    thread.log = capture
    thread.p = {p.name: p for p in cfg.principals}
    thread.kms = {name: client(thread.endpoint, p) for name, p in thread.p.items()}
    yield thread
    thread.stop()
    logger.removeHandler(capture)
    logger.setLevel(old_level)


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [ADMIN_STMT, *statements]})


def allow(who: str, actions: Any, **kw: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": {"AWS": arn(who)}, "Action": actions, "Resource": "*", **kw}


def new_key(srv, *statements: dict[str, Any]) -> str:
    return srv.kms["admin"].create_key(Policy=policy(*statements))["KeyMetadata"]["KeyId"]


def code(call) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    return exc.value.response["Error"]["Code"]


# -- hand-made requests ------------------------------------------------------------------------
class _Signer(SigV4Auth):
    """botocore's signer, optionally leaving some headers out of the signature."""

    def __init__(self, *args: Any, skip: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.skip = skip

    def headers_to_sign(self, request: Any) -> Any:
        out = super().headers_to_sign(request)
        for name in self.skip:
            del out[name]
        return out


def sign(srv, operation: str, body: bytes, *, who: str = "admin", when: datetime | None = None,
         region: str = REGION, service: str = "kms", skip: tuple[str, ...] = (),
         extra: dict[str, str] | None = None, akid: str | None = None, secret: str | None = None) -> dict[str, str]:
    p = srv.p[who]
    req = AWSRequest("POST", srv.endpoint + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{operation}", **(extra or {})})
    now = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        _Signer(Credentials(akid or p.access_key_id, secret or p.secret), service, region, skip=skip).add_auth(req)
    return dict(req.headers.items())


def send(srv, headers: Any, body: bytes, path: str = "/", method: str = "POST") -> tuple[int, dict[str, Any], str]:
    """(status, JSON body, request id); ``headers`` may be a list of pairs (repeats kept)."""
    host, port = srv.endpoint.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        pairs = headers if isinstance(headers, list) else list(headers.items())
        if not any(k.lower() == "host" for k, _ in pairs):
            pairs = [("Host", f"{host}:{port}"), *pairs]
        for k, v in pairs:
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            doc = {"raw": raw.decode("latin-1")}
        return resp.status, doc, resp.getheader("x-amzn-RequestId") or ""
    finally:
        conn.close()


def call(srv, operation: str, params: Any, **kw: Any) -> tuple[int, dict[str, Any], str]:
    body = params if isinstance(params, bytes) else json.dumps(params).encode()
    return send(srv, sign(srv, operation, body, **kw), body)


def audit_count(srv) -> int:
    return len(audit_lines(srv.cfg))


def records_for(srv, rid: str) -> list[dict[str, Any]]:
    return [r for r in audit_lines(srv.cfg) if r.get("request_id") == rid]


# -- SigV4 -------------------------------------------------------------------------------------
LIST = b"{}"


def _now(**delta: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(**delta)


def _dup(name: str, value: str):
    def tamper(h: dict[str, str]) -> list[tuple[str, str]]:
        return [*h.items(), (name, value)]
    return tamper


def _set(name: str, value: str):
    def tamper(h: dict[str, str]) -> dict[str, str]:
        out = {k: v for k, v in h.items() if k.lower() != name.lower()}
        out[name] = value
        return out
    return tamper


def _auth_sub(old: str, new: str):
    def tamper(h: dict[str, str]) -> dict[str, str]:
        return {**h, "Authorization": h["Authorization"].replace(old, new)}
    return tamper


SIGV4_REJECTIONS = {
    # signature coverage
    "host unsigned": ({"skip": ("host",)}, None, "InvalidSignatureException"),
    "x-amz-date unsigned": ({"skip": ("x-amz-date",)}, None, "InvalidSignatureException"),
    "x-amz-target unsigned": ({"skip": ("x-amz-target",)}, None, "InvalidSignatureException"),
    "target changed after signing": ({}, _set("X-Amz-Target", "TrentService.CreateKey"),
                                     "InvalidSignatureException"),
    "second target added": ({}, _dup("X-Amz-Target", "TrentService.CreateKey"), "InvalidSignatureException"),
    "second date added": ({}, _dup("X-Amz-Date", "20200101T000000Z"), "InvalidSignatureException"),
    "host changed (replay elsewhere)": ({}, _set("Host", "kms.other.example"), "InvalidSignatureException"),
    "content sha256 mismatch": ({}, _set("X-Amz-Content-SHA256", "0" * 64), "InvalidSignatureException"),
    "unsigned payload": ({}, _set("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD"), "InvalidSignatureException"),
    # credential scope
    "other region": ({"region": "eu-west-1"}, None, "InvalidSignatureException"),
    "other service": ({"service": "s3"}, None, "InvalidSignatureException"),
    "scope date not the request date": ({}, lambda h: _auth_sub("/" + _now().strftime("%Y%m%d") + "/",
                                                                "/20200101/")(h),
                                        "InvalidSignatureException"),
    "scope terminator": ({}, _auth_sub("aws4_request", "aws5_request"), "InvalidSignatureException"),
    # time window (the server allows 5 minutes either way)
    # (offsets from the moment the test runs, not from collection: the suite
    # takes minutes, which would bring "310 s ahead" into the window)
    "310 s old": ({"when": timedelta(seconds=-310)}, None, "InvalidSignatureException"),
    "310 s ahead": ({"when": timedelta(seconds=310)}, None, "InvalidSignatureException"),
    "a year old": ({"when": timedelta(days=-365)}, None, "InvalidSignatureException"),
    "time not a time": ({}, lambda h: _set("X-Amz-Date", _now().strftime("%Y%m%d") + "T256199Z")(h),
                        "IncompleteSignatureException"),
    # who
    "unknown access key": ({"akid": "AKIANOBODY0000000000"}, None, "UnrecognizedClientException"),
    "another principal's secret": ({"secret": "x" * 40}, None, "InvalidSignatureException"),
    "no authorization": ({}, lambda h: {k: v for k, v in h.items() if k != "Authorization"},
                         "MissingAuthenticationTokenException"),
    "signature in upper case": ({}, lambda h: {**h, "Authorization": re.sub(
        r"Signature=(\w+)", lambda m: "Signature=" + m.group(1).upper(), h["Authorization"])},
        "IncompleteSignatureException"),
    "other algorithm": ({}, _auth_sub("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"), "IncompleteSignatureException"),
    "garbage authorization": ({}, _set("Authorization", "Bearer x" * 200), "IncompleteSignatureException"),
}


@pytest.mark.parametrize("case", sorted(SIGV4_REJECTIONS))
def test_sigv4_rejections_are_denied_and_audited_once(srv, case):
    kw, tamper, wanted = SIGV4_REJECTIONS[case]
    if isinstance(kw.get("when"), timedelta):
        kw = {**kw, "when": _now() + kw["when"]}
    if "secret" in kw:
        kw = {**kw, "secret": srv.p["alice"].secret}
    headers = sign(srv, "ListKeys", LIST, **kw)
    if tamper is not None:
        headers = tamper(headers)
    before = audit_count(srv)
    status, body, rid = send(srv, headers, LIST)
    assert (status, body.get("__type")) == (400, wanted), body
    assert audit_count(srv) == before + 1
    (rec,) = records_for(srv, rid)
    assert rec["outcome"] == "denied" and rec["error"] == wanted and rec["principal"] == "-"


def test_refused_sign_ins_name_the_access_key_they_claimed(srv):
    """Guessing against one access key is traceable in the audit log: a refused
    sign-in records the (unverified) access key id it named, escaped and capped."""
    cases = {"unknown": {"akid": "AKIANOBODY0000000000"},
             "wrong secret": {"akid": srv.p["alice"].access_key_id, "secret": "x" * 40},
             "stale": {"akid": srv.p["bob"].access_key_id, "when": _now(seconds=-400)}}
    for case, kw in cases.items():
        status, body, rid = send(srv, sign(srv, "ListKeys", LIST, **kw), LIST)
        assert status == 400, (case, body)
        (rec,) = records_for(srv, rid)
        assert (rec["principal"], rec["access_key"], rec["outcome"]) == ("-", kw["akid"], "denied"), case
    long = "AKIA" + "Z" * 500
    status, _, rid = send(srv, sign(srv, "ListKeys", LIST, akid=long, secret="x" * 40), LIST)
    (rec,) = records_for(srv, rid)
    assert status == 400 and rec["access_key"] == long[:128]
    headers = sign(srv, "ListKeys", LIST)
    headers["Authorization"] = headers["Authorization"].replace("Credential=AKIA", "Credential=AK\u00e9\"IA")
    status, _, rid = send(srv, headers, LIST)
    (rec,) = records_for(srv, rid)
    assert status == 400 and rec["access_key"].startswith('AK\\udce9"IA') and rec["access_key"].isascii()


def _signed_for_host(srv, host: str, who: str = "admin") -> dict[str, str]:
    """ListKeys signed by botocore for https://<host>/, to be sent to ``srv``."""
    p = srv.p[who]
    req = AWSRequest("POST", f"http://{host}/", data=LIST, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    SigV4Auth(Credentials(p.access_key_id, p.secret), "kms", REGION).add_auth(req)
    return {"Host": host, **dict(req.headers.items())}


def test_without_hostnames_a_request_signed_for_another_server_is_accepted(srv):
    """The default (documented): any signed host is accepted, so a request captured
    on its way to another server that trusts the same access key replays here."""
    assert send(srv, _signed_for_host(srv, "kms-other.example:8443"), LIST)[0] == 200


def test_the_time_window_edges_are_accepted(srv):
    for delta in (-290, 290):
        assert call(srv, "ListKeys", LIST, when=_now(seconds=delta))[0] == 200


def test_the_five_minute_window_is_inclusive_to_the_second(srv):
    t0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
    with mock.patch.object(srv.server.verifier, "clock", lambda: t0.timestamp()):
        got = {delta: call(srv, "ListKeys", LIST, when=t0 + timedelta(seconds=delta))[1].get("__type")
               for delta in (-301, -300, 300, 301)}
    assert got == {-301: "InvalidSignatureException", -300: None, 300: None, 301: "InvalidSignatureException"}


def test_body_swapped_for_another_signed_body(srv):
    """A valid signature of one body does not carry another (nor an appended byte)."""
    key = new_key(srv)
    good = json.dumps({"KeyId": key}).encode()
    headers = sign(srv, "DescribeKey", good)
    for other in (json.dumps({"KeyId": key, "GrantTokens": []}).encode(), good + b" ", good[:-1]):
        assert send(srv, headers, other)[1]["__type"] == "InvalidSignatureException"
    assert send(srv, headers, good)[0] == 200


def test_presigned_query_auth_is_not_accepted(srv):
    p = srv.p["admin"]
    req = AWSRequest("POST", srv.endpoint + "/", data=LIST, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    SigV4QueryAuth(Credentials(p.access_key_id, p.secret), "kms", REGION).add_auth(req)
    path = req.url[len(srv.endpoint):]
    status, body, _ = send(srv, dict(req.headers.items()), LIST, path=path)
    assert (status, body["__type"]) == (400, "MissingAuthenticationTokenException")


def test_header_name_case_does_not_matter(srv):
    headers = {k.upper() if k != "Authorization" else k: v for k, v in sign(srv, "ListKeys", LIST).items()}
    assert send(srv, headers, LIST)[0] == 200


def test_a_replayed_request_is_accepted_within_the_window_as_documented(srv):
    """KMS has no nonce: a captured request replays for 5 minutes (docs/SERVER.md says so; TLS prevents capture)."""
    headers = sign(srv, "ListKeys", LIST)
    assert send(srv, headers, LIST)[0] == 200 and send(srv, headers, LIST)[0] == 200
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "SERVER.md").read_text()
    assert "replayed within its 5-minute window" in doc


def test_a_revoked_access_key_is_refused_at_once(srv):
    from encfs.server.storage import AccessKey

    p = srv.p["bob"]

    async def take() -> AccessKey:
        async with srv.server.storage.transaction(write=True) as tx:
            ak = await tx.get_access_key(p.access_key_id)
            await tx.delete_access_key(p.access_key_id)
            return ak

    async def give(ak: AccessKey) -> None:
        async with srv.server.storage.transaction(write=True) as tx:
            await tx.put_access_key(ak)

    ak = srv.call(take())
    try:
        assert code(lambda: srv.kms["bob"].list_keys()) == "UnrecognizedClientException"
    finally:
        srv.call(give(ak))
    assert code(lambda: srv.kms["bob"].list_keys()) == "AccessDeniedException"  # known again, not allowed


# -- malformed and over-limit input --------------------------------------------------------------
def _b64(n: int) -> str:
    return base64.b64encode(b"x" * n).decode()


BAD_INPUT = {
    "not json": ("Encrypt", b"{nope", "SerializationException"),
    "json array": ("Encrypt", b"[1, 2]", "SerializationException"),
    "deeply nested": ("ListKeys", b"[" * 20000 + b"]" * 20000, "SerializationException"),
    "invalid utf-8": ("ListKeys", b'{"Limit": "\xff"}', "SerializationException"),
    "missing KeyId": ("Encrypt", {"Plaintext": _b64(4)}, "ValidationException"),
    "Decrypt without a blob": ("Decrypt", {}, "ValidationException"),  # optional in botocore's model
    "ReEncrypt without a blob": ("ReEncrypt", {"DestinationKeyId": "k"}, "ValidationException"),
    "KeyId a number": ("DescribeKey", {"KeyId": 5}, "ValidationException"),
    "context a list": ("Encrypt", {"KeyId": "k", "Plaintext": _b64(4), "EncryptionContext": ["a"]},
                       "ValidationException"),
    "context value a number": ("Encrypt", {"KeyId": "k", "Plaintext": _b64(4), "EncryptionContext": {"a": 1}},
                               "ValidationException"),
    "NumberOfBytes a string": ("GenerateRandom", {"NumberOfBytes": "32"}, "ValidationException"),
    "NumberOfBytes a float": ("GenerateRandom", {"NumberOfBytes": 32.0}, "ValidationException"),
    "NumberOfBytes a bool": ("GenerateRandom", {"NumberOfBytes": True}, "ValidationException"),
    "NumberOfBytes 1025": ("GenerateRandom", {"NumberOfBytes": 1025}, "ValidationException"),
    "NumberOfBytes 0": ("GenerateRandom", {"NumberOfBytes": 0}, "ValidationException"),
    "Plaintext 4097 bytes": ("Encrypt", {"KeyId": "k", "Plaintext": _b64(4097)}, "ValidationException"),
    "Plaintext not base64": ("Encrypt", {"KeyId": "k", "Plaintext": "***"}, "ValidationException"),
    "CiphertextBlob 6145 bytes": ("Decrypt", {"CiphertextBlob": _b64(6145)}, "ValidationException"),
    "CiphertextBlob empty": ("Decrypt", {"CiphertextBlob": ""}, "ValidationException"),
    "11 grant tokens": ("Decrypt", {"CiphertextBlob": _b64(60), "GrantTokens": ["t"] * 11}, "ValidationException"),
    "Limit 0": ("ListKeys", {"Limit": 0}, "ValidationException"),
    "enum outside its set": ("GenerateDataKey", {"KeyId": "k", "KeySpec": "AES_512"}, "ValidationException"),
    "lone surrogate in a context value": ("Encrypt", (b'{"KeyId": "k", "Plaintext": "eA==", '
                                                     b'"EncryptionContext": {"a": "\\ud800"}}'), "ValidationException"),
    "lone surrogate in a context key": ("Encrypt", (b'{"KeyId": "k", "Plaintext": "eA==", '
                                                   b'"EncryptionContext": {"\\udfff": "a"}}'), "ValidationException"),
    "lone surrogate in a tag key": ("TagResource", (b'{"KeyId": "k", "Tags": [{"TagKey": "\\ud800", '
                                                   b'"TagValue": "v"}]}'), "ValidationException"),
    "NUL in a description": ("CreateKey", {"Description": "a\x00b"}, "ValidationException"),
    "NUL in a grant id": ("RetireGrant", {"KeyId": "k", "GrantId": "g\x00"}, "ValidationException"),
    "newline in a grantee": ("CreateGrant", {"KeyId": "k", "GranteePrincipal": arn("bob") + "\n",
                                             "Operations": ["Decrypt"]}, "ValidationException"),
    "space in a grant name": ("CreateGrant", {"KeyId": "k", "GranteePrincipal": arn("bob"), "Name": "a b",
                                              "Operations": ["Decrypt"]}, "ValidationException"),
    "grant operation outside its set": ("CreateGrant", {"KeyId": "k", "GranteePrincipal": arn("bob"),
                                                        "Operations": ["PutKeyPolicy"]}, "ValidationException"),
    "forged grant token with a surrogate": (
        "RetireGrant", {"GrantToken": base64.urlsafe_b64encode(b'{"g": "\\ud800", "k": "x"}').decode()},
        "InvalidGrantTokenException"),
    "51 tags at creation": ("CreateKey", {"Tags": [{"TagKey": f"t{i}", "TagValue": "v"} for i in range(51)]},
                            "TagException"),
    "unknown operation": ("DoEverything", {}, "UnknownOperationException"),
    "operation this server does not serve": ("Sign", {"KeyId": "k", "Message": "eA==",
                                                      "SigningAlgorithm": "RSASSA_PSS_SHA_256"},
                                             "UnsupportedOperationException"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_gets_a_specific_400_and_one_audit_record(srv, case):
    operation, params, wanted = BAD_INPUT[case]
    before = audit_count(srv)
    status, body, rid = call(srv, operation, params)
    assert (status, body.get("__type")) == (400, wanted), body
    assert audit_count(srv) == before + 1 and len(records_for(srv, rid)) == 1


def test_target_outside_trentservice_and_wrong_paths_or_methods(srv):
    headers = sign(srv, "ListKeys", LIST)
    headers["X-Amz-Target"] = "Other.ListKeys"
    assert send(srv, headers, LIST)[1]["__type"] == "InvalidSignatureException"  # the target is signed
    for path, method in (("/other", "POST"), ("/", "PUT"), ("/", "GET")):
        status, body, rid = send(srv, sign(srv, "ListKeys", LIST), LIST, path=path, method=method)
        assert status == 404 and body["__type"] == "UnknownOperationException"
        assert len(records_for(srv, rid)) == 1


def test_a_wrong_content_type_is_ignored_not_fatal(srv):
    """The body is JSON whatever the label says (KMS clients send x-amz-json-1.1); nothing breaks."""
    status, body, _ = call(srv, "ListKeys", LIST, extra={"Content-Type": "text/plain"})
    assert status == 200 and "Keys" in body


def test_size_limits(srv):
    big = json.dumps({"KeyId": "k", "Description": "x" * 70000}).encode()
    assert call(srv, "DescribeKey", big)[0] == 413
    # a compressed body counts decompressed (aiohttp inflates it in bounded steps): a gzip bomb is a 413
    bomb = gzip.compress(b" " * (20 << 20))
    headers = sign(srv, "ListKeys", bomb, extra={"Content-Encoding": "gzip"})
    status, _body, rid = send(srv, headers, bomb)
    assert status == 413 and len(records_for(srv, rid)) == 1
    # chunked, no Content-Length
    host, port = srv.endpoint.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = sign(srv, "DescribeKey", big)
    conn.request("POST", "/", body=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]),
                 headers={k: v for k, v in headers.items() if k.lower() != "host"}, encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    # a huge header: refused by the HTTP layer (before any KMS handling), the server lives on
    status, _, _ = send(srv, {**sign(srv, "ListKeys", LIST), "X-Junk": "j" * 70000}, LIST)
    assert status in (400, 431)
    assert call(srv, "ListKeys", LIST)[0] == 200


def test_unauthenticated_junk_in_the_target_header_is_audited_and_harms_no_neighbour(srv):
    """Non-UTF-8 header bytes arrive as lone surrogates; such a record once failed its
    whole audit batch (every concurrent request got a 500, changes already made went
    unaudited)."""
    host, port = srv.endpoint.split("//")[1].rsplit(":", 1)

    def junk() -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.\xff\xfe\r\n"
                      b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    before = audit_count(srv)
    with ThreadPoolExecutor(8) as pool:
        junks = [pool.submit(junk) for _ in range(8)]
        goods = [pool.submit(call, srv, "ListKeys", LIST) for _ in range(24)]
        outs = [f.result() for f in junks]
        results = [f.result() for f in goods]
    assert all(b" 400 " in o.split(b"\r\n")[0] and b"MissingAuthenticationToken" in o for o in outs)
    assert [r[0] for r in results] == [200] * 24
    assert audit_count(srv) == before + 32
    assert all(len(records_for(srv, r[2])) == 1 for r in results)
    junk_records = audit_lines(srv.cfg)[before:]
    assert sum(1 for r in junk_records if r["action"].startswith("\\udcff")) == 8
    shutil.copy(srv.cfg.audit_path, srv.cfg.audit_path.with_name("copy.log"))
    from encfs.audit import AuditLog

    assert AuditLog(srv.cfg.audit_path.with_name("copy.log")).verify().ok


def test_audit_records_that_cannot_be_encoded_are_escaped_not_dropped():
    """Defence in depth in the group committer: one bad record does not fail its batch."""
    import asyncio
    import tempfile
    from pathlib import Path

    from encfs.audit import AuditLog
    from encfs.server.audit import FileAuditSink, GroupCommitter

    async def run(path: Path) -> None:
        committer = GroupCommitter(FileAuditSink(path))
        await asyncio.gather(*(committer.submit({"time": "t", "principal": "p", "action": a, "outcome": "success"})
                               for a in ("ok", "bad\udcff", "ok2")))
        await committer.sink.close()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.log"
        asyncio.run(run(path))
        log = AuditLog(path)
        assert [r["action"] for r in log.records()] == ["ok", "bad\\udcff", "ok2"] and log.verify().ok


# -- authorisation ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(srv):
    """victim: only the admin; mine: mallory may do everything on it; blobs of each."""
    admin = srv.kms["admin"]
    victim = new_key(srv)
    admin.create_alias(AliasName="alias/adv-victim", TargetKeyId=victim)
    mine = new_key(srv, allow("mallory", "kms:*"))
    admin.create_alias(AliasName="alias/adv-mine", TargetKeyId=mine)
    return {"victim": victim, "mine": mine,
            "victim_blob": admin.encrypt(KeyId=victim, Plaintext=b"victim")["CiphertextBlob"],
            "mine_blob": admin.encrypt(KeyId=mine, Plaintext=b"mine")["CiphertextBlob"]}


ALIAS_ATTACKS = {
    "point the victim's alias at my key": lambda m, k: m.update_alias(AliasName="alias/adv-victim",
                                                                      TargetKeyId=k["mine"]),
    "point my alias at the victim's key": lambda m, k: m.update_alias(AliasName="alias/adv-mine",
                                                                      TargetKeyId=k["victim"]),
    "alias the victim's key": lambda m, k: m.create_alias(AliasName="alias/adv-new", TargetKeyId=k["victim"]),
    "delete the victim's alias": lambda m, k: m.delete_alias(AliasName="alias/adv-victim"),
    "use the victim's key through its alias": lambda m, k: m.encrypt(KeyId="alias/adv-victim", Plaintext=b"x"),
    "use the victim's key through its alias ARN": lambda m, k: m.encrypt(
        KeyId=f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/adv-victim", Plaintext=b"x"),
    "decrypt the victim's blob naming my key": lambda m, k: m.decrypt(CiphertextBlob=k["victim_blob"],
                                                                      KeyId=k["mine"]),
    "re-encrypt the victim's blob to my key": lambda m, k: m.re_encrypt(CiphertextBlob=k["victim_blob"],
                                                                        DestinationKeyId=k["mine"]),
    "re-encrypt my blob to the victim's key": lambda m, k: m.re_encrypt(CiphertextBlob=k["mine_blob"],
                                                                        DestinationKeyId=k["victim"]),
    "grant myself the victim's key": lambda m, k: m.create_grant(KeyId=k["victim"], GranteePrincipal=arn("mallory"),
                                                                 Operations=["Decrypt"]),
    "policy naming me on the victim's key": lambda m, k: m.put_key_policy(KeyId=k["victim"], PolicyName="default",
                                                                          Policy=policy(allow("mallory", "kms:*"))),
}


@pytest.mark.parametrize("case", sorted(ALIAS_ATTACKS))
def test_a_principal_with_its_own_key_never_reaches_another(srv, keys, case):
    assert code(lambda: ALIAS_ATTACKS[case](srv.kms["mallory"], keys)) == "AccessDeniedException"
    admin = srv.kms["admin"]
    assert {a["AliasName"]: a["TargetKeyId"] for a in admin.list_aliases(KeyId=keys["victim"])["Aliases"]} == \
        {"alias/adv-victim": keys["victim"]}
    assert admin.list_grants(KeyId=keys["victim"])["Grants"] == []
    assert json.loads(admin.get_key_policy(KeyId=keys["victim"], PolicyName="default")["Policy"])["Statement"] == \
        [ADMIN_STMT]


def test_mallory_uses_her_own_key_normally(srv, keys):
    m = srv.kms["mallory"]
    assert m.decrypt(CiphertextBlob=keys["mine_blob"])["Plaintext"] == b"mine"
    m.update_alias(AliasName="alias/adv-mine", TargetKeyId=keys["mine"])


def test_alias_names_cannot_be_squatted(srv, keys):
    """CreateAlias on her own key (key policy) is not enough: the name must be
    hers too (account_actions, the IAM stand-in), as KMS needs kms:CreateAlias
    on the alias ARN.  Writers of aws-kms://alias/lake-payroll never meet her key."""
    m = srv.kms["mallory"]
    with pytest.raises(ClientError) as exc:
        m.create_alias(AliasName="alias/lake-payroll", TargetKeyId=keys["mine"])
    err = exc.value.response["Error"]
    assert err["Code"] == "AccessDeniedException"
    assert f"kms:CreateAlias on resource: arn:aws:kms:{REGION}:{ACCOUNT}:alias/lake-payroll" in err["Message"]
    assert "alias/lake-payroll" not in {a["AliasName"] for a in srv.kms["admin"].list_aliases()["Aliases"]}
    # in her namespace the same call works (the refusal above was the name's)
    m.create_alias(AliasName="alias/adv-mallory", TargetKeyId=keys["mine"])
    m.delete_alias(AliasName="alias/adv-mallory")


def test_alias_permissions_outside_the_pattern_are_refused_before_the_alias_is_looked_up(srv, keys):
    """UpdateAlias/DeleteAlias on a name outside mallory's pattern: refused
    whether or not the alias exists (no probing for names), and nothing changes."""
    admin, m = srv.kms["admin"], srv.kms["mallory"]
    admin.create_alias(AliasName="alias/lake-shared", TargetKeyId=keys["mine"])  # her key, not her name
    try:
        for name in ("alias/lake-shared", "alias/lake-nonexistent", "alias/adv", "alias/ADV-mine"):
            assert code(lambda name=name: m.update_alias(AliasName=name, TargetKeyId=keys["mine"])) == "AccessDeniedException"
            assert code(lambda name=name: m.delete_alias(AliasName=name)) == "AccessDeniedException"
        assert {a["AliasName"] for a in admin.list_aliases(KeyId=keys["mine"])["Aliases"]} >= {"alias/lake-shared"}
    finally:
        admin.delete_alias(AliasName="alias/lake-shared")


@pytest.mark.parametrize("has", [("ReEncryptFrom",), ("ReEncryptTo",), ("ReEncryptFrom", "ReEncryptTo")])
def test_re_encrypt_needs_from_on_the_source_and_to_on_the_destination(srv, has):
    src = new_key(srv, allow("alice", ["kms:ReEncryptFrom"] if "ReEncryptFrom" in has else ["kms:Decrypt"]))
    dst = new_key(srv, allow("alice", ["kms:ReEncryptTo"] if "ReEncryptTo" in has else ["kms:Encrypt"]))
    blob = srv.kms["admin"].encrypt(KeyId=src, Plaintext=b"p")["CiphertextBlob"]
    go = lambda: srv.kms["alice"].re_encrypt(CiphertextBlob=blob, DestinationKeyId=dst)
    if len(has) == 2:
        out = go()
        assert srv.kms["admin"].decrypt(CiphertextBlob=out["CiphertextBlob"])["Plaintext"] == b"p"
        # and to the source key itself: ReEncryptTo on it is needed too
        assert code(lambda: srv.kms["alice"].re_encrypt(CiphertextBlob=blob, DestinationKeyId=src)) == \
            "AccessDeniedException"
    else:
        assert code(go) == "AccessDeniedException"


def test_decrypt_resolves_the_key_from_the_blob_before_authorising(srv, keys):
    """Bob may decrypt under his key; a victim blob with his KeyId named is refused on the
    victim key's policy (not IncorrectKeyException, which would confirm the blob's key)."""
    bobs = new_key(srv, allow("bob", "kms:*"))
    assert code(lambda: srv.kms["bob"].decrypt(CiphertextBlob=keys["victim_blob"], KeyId=bobs)) == \
        "AccessDeniedException"
    assert code(lambda: srv.kms["admin"].decrypt(CiphertextBlob=keys["victim_blob"], KeyId=bobs)) == \
        "IncorrectKeyException"


CHILD_GRANTS = {  # (parent constraints, child operations, child constraints, allowed)
    "same": ({"EncryptionContextSubset": {"d": "A"}}, ["Decrypt"], {"EncryptionContextSubset": {"d": "A"}}, True),
    "stricter subset": ({"EncryptionContextSubset": {"d": "A"}}, ["Decrypt"],
                        {"EncryptionContextSubset": {"d": "A", "e": "1"}}, True),
    "equals within subset": ({"EncryptionContextSubset": {"d": "A"}}, ["Decrypt"],
                             {"EncryptionContextEquals": {"d": "A"}}, True),
    "fewer operations": ({}, ["Decrypt"], {}, True),
    "no constraint": ({"EncryptionContextSubset": {"d": "A"}}, ["Decrypt"], None, False),
    "other value": ({"EncryptionContextSubset": {"d": "A"}}, ["Decrypt"], {"EncryptionContextSubset": {"d": "B"}},
                    False),
    "key in another case": ({"EncryptionContextSubset": {"d": "A"}}, ["Decrypt"],
                            {"EncryptionContextSubset": {"D": "A"}}, False),
    "subset under equals": ({"EncryptionContextEquals": {"d": "A"}}, ["Decrypt"],
                            {"EncryptionContextSubset": {"d": "A"}}, False),
    "wider equals": ({"EncryptionContextEquals": {"d": "A"}}, ["Decrypt"],
                     {"EncryptionContextEquals": {"d": "A", "e": "1"}}, False),
    "more operations": ({}, ["Decrypt", "Encrypt"], {}, False),
    "an operation the parent lacks": ({}, ["GenerateDataKey"], {}, False),
    "re-encrypt from a decrypt grant": ({}, ["ReEncryptFrom"], {}, False),
}


@pytest.mark.parametrize("case", sorted(CHILD_GRANTS))
def test_a_grant_that_allows_create_grant_creates_only_stricter_grants(srv, case):
    parent_c, ops, child_c, ok = CHILD_GRANTS[case]
    key = new_key(srv)
    kw = {"Constraints": parent_c} if parent_c else {}
    srv.kms["admin"].create_grant(KeyId=key, GranteePrincipal=arn("bob"), Operations=["Decrypt", "CreateGrant"],
                                  **kw)
    child = {"KeyId": key, "GranteePrincipal": arn("mallory"), "Operations": ops}
    if child_c:
        child["Constraints"] = child_c
    if ok:
        srv.kms["bob"].create_grant(**child)
    else:
        assert code(lambda: srv.kms["bob"].create_grant(**child)) == "AccessDeniedException"
        assert [g["GranteePrincipal"] for g in srv.kms["admin"].list_grants(KeyId=key)["Grants"]] == [arn("bob")]


def test_retire_and_revoke_only_by_whom_kms_allows(srv):
    admin = srv.kms["admin"]
    key = new_key(srv)
    bobs = admin.create_grant(KeyId=key, GranteePrincipal=arn("bob"), Operations=["Decrypt"],
                              RetiringPrincipal=arn("alice"))
    mallorys = admin.create_grant(KeyId=key, GranteePrincipal=arn("mallory"), Operations=["Encrypt", "RetireGrant"])
    m = srv.kms["mallory"]
    # her grant's RetireGrant covers her own grant only (it once retired every grant on the key)
    assert code(lambda: m.retire_grant(KeyId=key, GrantId=bobs["GrantId"])) == "AccessDeniedException"
    assert code(lambda: m.retire_grant(GrantToken=bobs["GrantToken"])) == "AccessDeniedException"
    forged = base64.urlsafe_b64encode(json.dumps({"g": bobs["GrantId"], "k": key}).encode()).decode()
    assert code(lambda: m.retire_grant(GrantToken=forged)) == "AccessDeniedException"
    assert code(lambda: m.revoke_grant(KeyId=key, GrantId=bobs["GrantId"])) == "AccessDeniedException"
    assert code(lambda: srv.kms["bob"].retire_grant(GrantToken=bobs["GrantToken"])) == "AccessDeniedException"
    assert code(lambda: srv.kms["bob"].revoke_grant(KeyId=key, GrantId=bobs["GrantId"])) == "AccessDeniedException"
    assert len(admin.list_grants(KeyId=key)["Grants"]) == 2
    m.retire_grant(KeyId=key, GrantId=mallorys["GrantId"])  # her own
    srv.kms["alice"].retire_grant(GrantToken=bobs["GrantToken"])  # the retiring principal
    assert admin.list_grants(KeyId=key)["Grants"] == []


CONDITIONS = {  # statement extras for alice's Encrypt, then [(context, allowed)]
    "condition key in any case": ({"Condition": {"StringEquals": {"KMS:ENCRYPTIONCONTEXT:Dataset": "A"}}},
                                  [({"dataset": "A"}, True), ({"dataset": "a"}, False)]),
    "StringLike ? and *": ({"Condition": {"StringLike": {"kms:EncryptionContext:path": "lake/?/*.parquet"}}},
                           [({"path": "lake/a/x.parquet"}, True), ({"path": "lake/ab/x.parquet"}, False),
                            ({"path": "lake/a/x.csv"}, False), ({"path": "lake/[a]/x.parquet"}, False)]),
    "StringLike takes [ literally": ({"Condition": {"StringLike": {"kms:EncryptionContext:p": "[ab]"}}},
                                     [({"p": "[ab]"}, True), ({"p": "a"}, False)]),
    "ForAllValues alone passes an empty context": (
        {"Condition": {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["dataset"]}}},
        [({"dataset": "A"}, True), ({}, True), ({"dataset": "A", "x": "1"}, False)]),
    "ForAllValues with a Null check": (
        {"Condition": {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["dataset"]},
                       "Null": {"kms:EncryptionContextKeys": "false"}}},
        [({"dataset": "A"}, True), ({}, False)]),
    "ForAnyValue": ({"Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "ten*"}}},
                    [({"tenant": "t", "x": "y"}, True), ({"x": "y"}, False), ({}, False)]),
    "a case twin cannot satisfy an Allow": ({"Condition": {"StringEquals": {"kms:EncryptionContext:dataset": "A"}}},
                                            [({"dataset": "A", "DATASET": "B"}, False)]),
    "NotAction": ({"Action": None, "NotAction": ["kms:Decrypt", "kms:GenerateDataKey*"]},
                  [({}, True)]),
    "Resource another key": ({"Resource": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"},
                             [({}, False)]),
    "Principal a wildcard ARN": ({"Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/al*"}}, [({}, True)]),
    "Principal another account's root": ({"Principal": {"AWS": "arn:aws:iam::999999999999:root"}}, [({}, False)]),
}


@pytest.mark.parametrize("case", sorted(CONDITIONS))
def test_policy_conditions_over_http(srv, case):
    extra, expectations = CONDITIONS[case]
    stmt = allow("alice", "kms:Encrypt")
    stmt.update(extra)
    stmt = {k: v for k, v in stmt.items() if v is not None}
    key = new_key(srv, stmt)
    for ctx, ok in expectations:
        go = lambda: srv.kms["alice"].encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=ctx)  # noqa: B023
        if ok:
            go()
        else:
            assert code(go) == "AccessDeniedException", ctx


def test_deny_with_conditions_and_not_principal(srv):
    key = new_key(srv, allow("alice", "kms:*"), allow("bob", "kms:*"),
                  {"Effect": "Deny", "NotPrincipal": {"AWS": arn("admin")}, "Action": "kms:Decrypt", "Resource": "*",
                   "Condition": {"StringNotEquals": {"kms:EncryptionContext:tier": "public"}}})
    blob = srv.kms["admin"].encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"tier": "gold"})["CiphertextBlob"]
    for who in ("alice", "bob"):
        assert code(lambda: srv.kms[who].decrypt(  # noqa: B023
            CiphertextBlob=blob, EncryptionContext={"tier": "gold"})) == "AccessDeniedException"
    assert srv.kms["admin"].decrypt(CiphertextBlob=blob, EncryptionContext={"tier": "gold"})["Plaintext"] == b"x"
    pub = srv.kms["alice"].encrypt(KeyId=key, Plaintext=b"y", EncryptionContext={"tier": "public"})["CiphertextBlob"]
    assert srv.kms["bob"].decrypt(CiphertextBlob=pub, EncryptionContext={"tier": "public"})["Plaintext"] == b"y"


@pytest.mark.timeout(60)
def test_a_wildcard_condition_cannot_be_made_to_backtrack(srv):
    """StringLike with several * against a long hostile context value: this once held the
    event loop (every request of the server) for hours; each request is now one quick deny."""
    key = new_key(srv, {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
                        "Condition": {"StringLike": {"kms:EncryptionContext:path": "s3://lake/*/*/*/*.parquet"}}})
    value = "s3://lake/" + "a/" * 25000
    for _ in range(3):
        assert code(lambda: srv.kms["mallory"].encrypt(KeyId=key, Plaintext=b"x",
                                                       EncryptionContext={"path": value})) == "AccessDeniedException"
    assert srv.kms["admin"].encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"path": value})


def test_put_key_policy_lockout_safety(srv):
    key = new_key(srv)
    theirs = json.dumps({"Statement": [allow("alice", "kms:*")]})
    conditional = json.dumps({"Statement": [{**ADMIN_STMT, "Condition": {
        "StringEquals": {"kms:EncryptionContext:x": "y"}}}]})  # PutKeyPolicy carries no context
    for text in (theirs, conditional, json.dumps({"Statement": [{**ADMIN_STMT, "Effect": "Deny"}]})):
        assert code(lambda: srv.kms["admin"].put_key_policy(
            KeyId=key, PolicyName="default", Policy=text)) == "MalformedPolicyDocumentException"  # noqa: B023
    srv.kms["admin"].put_key_policy(KeyId=key, PolicyName="default", Policy=theirs,
                                    BypassPolicyLockoutSafetyCheck=True)
    assert code(lambda: srv.kms["admin"].describe_key(KeyId=key)) == "AccessDeniedException"
    srv.kms["alice"].describe_key(KeyId=key)


INERT_STATEMENTS = {  # each was accepted and then matched nothing: a Deny silently inert
    "bare ARN principal": {"Principal": arn("alice")},
    "principal list": {"Principal": [arn("alice")]},
    "empty principal object": {"Principal": {}},
    "principal object of objects": {"Principal": {"AWS": {"arn": arn("alice")}}},
    "action a number": {"Action": 5},
    "empty action list": {"Action": []},
    "resource an object": {"Resource": {"key": "*"}},
    "condition value an object": {"Condition": {"StringEquals": {"kms:EncryptionContext:c": {"v": "secret"}}}},
    "Principal and NotPrincipal": {"NotPrincipal": {"AWS": arn("bob")}},
    "Action and NotAction": {"NotAction": "kms:Encrypt"},
}


@pytest.mark.parametrize("case", sorted(INERT_STATEMENTS))
def test_a_deny_that_would_match_nothing_is_refused(srv, case):
    deny = {"Effect": "Deny", "Principal": {"AWS": arn("alice")}, "Action": "kms:Decrypt", "Resource": "*",
            **INERT_STATEMENTS[case]}
    assert code(lambda: srv.kms["admin"].create_key(Policy=policy(deny))) == "MalformedPolicyDocumentException"


def test_malformed_policy_documents_are_refused_not_500(srv):
    for text in ("[" * 10000 + "]" * 10000, '{"Statement": "x"}', '{"Statement": [{"Effect": "Allow"}]}',
                 json.dumps({"Statement": [{**ADMIN_STMT, "Condition": {"NumericLessThan": {"a": 1}}}]}),
                 json.dumps({"Statement": [{**ADMIN_STMT, "Condition": ["x"]}]})):
        assert code(lambda: srv.kms["admin"].create_key(Policy=text)) == "MalformedPolicyDocumentException"  # noqa


# -- key states --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def states(srv):
    admin = srv.kms["admin"]
    out = {}
    for state in ("Disabled", "PendingDeletion"):
        key = new_key(srv)
        blob = admin.encrypt(KeyId=key, Plaintext=b"p", EncryptionContext={"s": state})["CiphertextBlob"]
        if state == "Disabled":
            admin.disable_key(KeyId=key)
        else:
            admin.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
        out[state] = (key, blob)
    out["Enabled"] = (new_key(srv), None)
    return out


CRYPTO = {
    "Encrypt": lambda k, key, blob, ok, s: k.encrypt(KeyId=key, Plaintext=b"x"),
    "GenerateDataKey": lambda k, key, blob, ok, s: k.generate_data_key(KeyId=key, KeySpec="AES_256"),
    "GenerateDataKeyWithoutPlaintext": lambda k, key, blob, ok, s: k.generate_data_key_without_plaintext(
        KeyId=key, NumberOfBytes=32),
    "Decrypt": lambda k, key, blob, ok, s: k.decrypt(CiphertextBlob=blob, EncryptionContext={"s": s}),
    "ReEncrypt (source)": lambda k, key, blob, ok, s: k.re_encrypt(
        CiphertextBlob=blob, SourceEncryptionContext={"s": s}, DestinationKeyId=ok),
    "ReEncrypt (destination)": lambda k, key, blob, ok, s: k.re_encrypt(
        CiphertextBlob=k.encrypt(KeyId=ok, Plaintext=b"x")["CiphertextBlob"], DestinationKeyId=key),
    "RotateKeyOnDemand": lambda k, key, blob, ok, s: k.rotate_key_on_demand(KeyId=key),
    "EnableKeyRotation": lambda k, key, blob, ok, s: k.enable_key_rotation(KeyId=key),
}


@pytest.mark.parametrize("state,wanted", [("Disabled", "DisabledException"),
                                          ("PendingDeletion", "KMSInvalidStateException")])
@pytest.mark.parametrize("operation", sorted(CRYPTO))
def test_key_states_on_every_cryptographic_operation(srv, states, operation, state, wanted):
    key, blob = states[state]
    ok = states["Enabled"][0]
    got = code(lambda: CRYPTO[operation](srv.kms["admin"], key, blob, ok, state))
    if operation in ("RotateKeyOnDemand", "EnableKeyRotation") and state == "Disabled":
        wanted = "DisabledException"
    assert got == wanted


def test_a_principal_without_access_learns_nothing_of_the_state(srv, states):
    for state in ("Disabled", "PendingDeletion"):
        key, blob = states[state]
        assert code(lambda: srv.kms["mallory"].decrypt(CiphertextBlob=blob)) == "AccessDeniedException"  # noqa
        assert code(lambda: srv.kms["mallory"].encrypt(KeyId=key, Plaintext=b"x")) == "AccessDeniedException"  # noqa


# -- ciphertexts -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sealed(srv):
    key = new_key(srv)
    ctx = {"dataset": "A", "part": "1"}
    return key, ctx, srv.kms["admin"].encrypt(KeyId=key, Plaintext=b"payload", EncryptionContext=ctx)["CiphertextBlob"]


@pytest.mark.parametrize("ctx", [None, {}, {"dataset": "A"}, {"dataset": "B", "part": "1"},
                                 {"dataset": "A", "part": "1", "more": "x"}, {"Dataset": "A", "part": "1"},
                                 {"dataset": "A ", "part": "1"}])
def test_the_encryption_context_is_bound_to_the_ciphertext(srv, sealed, ctx):
    _key, good, blob = sealed
    kw = {} if ctx is None else {"EncryptionContext": ctx}
    assert code(lambda: srv.kms["admin"].decrypt(CiphertextBlob=blob, **kw)) == "InvalidCiphertextException"
    assert srv.kms["admin"].decrypt(CiphertextBlob=blob, EncryptionContext=good)["Plaintext"] == b"payload"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_ciphertexts_are_invalid_never_500(srv, sealed, data):
    _key, ctx, blob = sealed
    kind = data.draw(st.sampled_from(["random", "flip", "cut", "extend", "splice"]))
    if kind == "random":
        bad = data.draw(st.binary(min_size=1, max_size=300))
    elif kind == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        bad = blob[:i] + bytes([blob[i] ^ data.draw(st.integers(1, 255))]) + blob[i + 1:]
    elif kind == "cut":
        bad = blob[:data.draw(st.integers(1, len(blob) - 1))]
    elif kind == "extend":
        bad = blob + data.draw(st.binary(min_size=1, max_size=64))
    else:
        i = data.draw(st.integers(0, len(blob)))
        bad = blob[:i] + data.draw(st.binary(min_size=1, max_size=16)) + blob[i:]
    who = data.draw(st.sampled_from(["admin", "mallory"]))
    status, body, _ = call(srv, "Decrypt", {"CiphertextBlob": base64.b64encode(bad).decode(),
                                            "EncryptionContext": ctx}, who=who)
    assert status == 400, body
    # a byte changed inside the key id may name another (absent) key: NotFound, as for a deleted key
    allowed = {"InvalidCiphertextException", "NotFoundException"}
    if who == "mallory":
        allowed.add("AccessDeniedException")  # the blob still names the key she may not use
    assert body["__type"] in allowed, body


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | \
        st.text(max_size=20) | st.sampled_from(["alias/adv-victim", "SYMMETRIC_DEFAULT", "AES_256", "eA=="])
    return st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                    max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_request_bodies_never_cause_a_500(srv, data):
    from encfs.server.protocol import operation_model
    from encfs.server.service import OPERATIONS

    operation = data.draw(st.sampled_from(OPERATIONS))
    members = sorted(operation_model(operation).input_shape.members)
    body = data.draw(st.dictionaries(st.sampled_from(members), _json_values(), max_size=len(members)))
    status, out, _ = call(srv, operation, body, who=data.draw(st.sampled_from(["admin", "mallory"])))
    assert status in (200, 400), out
    assert status == 200 or out.get("__type") not in (None, "KMSInternalException"), out


# -- secrets -------------------------------------------------------------------------------------
def test_no_secret_in_storage_audit_logs_or_responses(srv, keys):
    admin = srv.kms["admin"]
    dk = admin.generate_data_key(KeyId=keys["mine"], KeySpec="AES_256")
    marker = b"PLAINTEXT-MARKER-0123456789"
    admin.encrypt(KeyId=keys["mine"], Plaintext=marker)
    srv.kms["mallory"].generate_data_key(KeyId=keys["mine"], NumberOfBytes=64)
    srv.server.audit.sink.log.sync()

    async def materials() -> list[bytes]:
        out = []
        async with srv.server.storage.transaction() as tx:
            for key in (keys["victim"], keys["mine"]):
                for ver in await tx.list_versions(key):
                    out.append(srv.server.master.unwrap(ver.wrapped, __import__(
                        "encfs.server.masterkey", fromlist=["material_aad"]).material_aad(key, ver.version)))
        return out

    secrets = [p.secret.encode() for p in srv.p.values()]
    assert all(len(s) >= 16 for s in secrets)
    mats = srv.call(materials())
    assert mats and all(len(m) == 32 for m in mats)
    needles = [*secrets, marker, dk["Plaintext"]]
    for raw in (*mats, dk["Plaintext"]):
        needles += [raw, base64.b64encode(raw), raw.hex().encode()]
    data_dir = srv.cfg.data_dir
    files = [p for p in data_dir.iterdir() if p.is_file() and p.name.startswith(("kms.db", "audit"))]
    assert any(p.name == "kms.db" for p in files) and any(p.name == "audit.log" for p in files)
    blobs = {p.name: p.read_bytes() for p in files}
    blobs["server log"] = "\n".join(srv.log.lines).encode()
    assert len(srv.log.lines) > 10  # log_requests is on: there is something to search
    # what any principal may read about keys and the server
    for out in (admin.describe_key(KeyId=keys["mine"]), admin.list_keys(), admin.list_grants(KeyId=keys["mine"]),
                admin.list_aliases(), admin.list_key_rotations(KeyId=keys["mine"]),
                admin.get_key_policy(KeyId=keys["mine"], PolicyName="default")):
        blobs["response"] = blobs.get("response", b"") + json.dumps(out, default=str).encode()
    with urllib.request.urlopen(srv.endpoint + "/health", timeout=10) as resp:
        blobs["health"] = resp.read()
    for name, blob in blobs.items():
        for needle in needles:
            assert needle not in blob, (name, needle[:8])
    # the sealed secrets are in the database, wrapped (not hashed: the server recomputes HMACs)
    assert b"AKIA" in b"".join(v for k, v in blobs.items() if k.startswith("kms.db"))


# -- audit ---------------------------------------------------------------------------------------
def test_exactly_one_record_per_request_under_concurrency(srv, keys):
    p = srv.p["mallory"]
    admin = client(srv.endpoint, srv.p["admin"])
    mallory = client(srv.endpoint, p)

    def one(i: int) -> str:
        kind = i % 4
        try:
            if kind == 0:
                return admin.encrypt(KeyId=keys["mine"], Plaintext=b"x")["ResponseMetadata"]["RequestId"]
            if kind == 1:
                return mallory.decrypt(CiphertextBlob=keys["victim_blob"])["ResponseMetadata"]["RequestId"]
            if kind == 2:
                return call(srv, "ListKeys", LIST, secret="y" * 40)[2]
            return call(srv, "Encrypt", b"{bad", who="mallory")[2]
        except ClientError as exc:
            return exc.response["ResponseMetadata"]["RequestId"]

    before = audit_count(srv)
    with ThreadPoolExecutor(16) as pool:
        rids = list(pool.map(one, range(64)))
    assert len(set(rids)) == 64 and all(rids)
    records = audit_lines(srv.cfg)[before:]
    assert len(records) == 64
    assert sorted(r["request_id"] for r in records) == sorted(rids)
    outcomes = {r["request_id"]: (r["outcome"], r.get("error")) for r in records}
    assert sum(1 for o in outcomes.values() if o == ("success", None)) == 16
    assert sum(1 for o in outcomes.values() if o == ("denied", "AccessDeniedException")) == 16
    assert sum(1 for o in outcomes.values() if o == ("denied", "InvalidSignatureException")) == 16
    assert sum(1 for o in outcomes.values() if o == ("failure", "SerializationException")) == 16


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "insert"])
def test_a_tampered_audit_log_fails_verification(srv, tmp_path, tamper):
    from encfs.cli.main import _load_commands, cli

    _load_commands()
    srv.kms["admin"].list_keys()
    lines = srv.cfg.audit_path.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 4
    i = len(lines) // 2
    if tamper == "edit":
        rec = json.loads(lines[i])
        rec["outcome"] = "success" if rec["outcome"] != "success" else "denied"
        lines[i] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    elif tamper == "delete":
        del lines[i]
    elif tamper == "reorder":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    else:
        lines.insert(i, lines[i])
    copy = tmp_path / "audit.log"
    copy.write_bytes(b"".join(lines))
    ok = CliRunner().invoke(cli, ["audit", "--log", str(srv.cfg.audit_path), "verify"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["audit", "--log", str(copy), "verify"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


# -- robustness ----------------------------------------------------------------------------------
def test_an_internal_error_tells_the_client_nothing_and_is_audited(srv):
    service = srv.server.service

    async def boom(call: Any) -> dict[str, Any]:
        raise RuntimeError(f"secret detail {srv.p['admin'].secret} /path/to/file.py line 1")

    with mock.patch.dict(service._handlers, {"ListKeys": boom}):
        status, body, rid = call(srv, "ListKeys", LIST)
    assert status == 500 and body == {"__type": "KMSInternalException", "message": "internal error"}
    (rec,) = records_for(srv, rid)
    assert rec["outcome"] == "failure" and rec["error"] == "KMSInternalException"
    assert not any(srv.p["admin"].secret in line or "secret detail" in line for line in srv.log.lines)


def test_concurrent_clients_all_succeed(srv, keys):
    admin = srv.kms["admin"]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            kms = client(srv.endpoint, srv.p["mallory"])
            for _ in range(10):
                dk = kms.generate_data_key(KeyId=keys["mine"], KeySpec="AES_256", EncryptionContext={"t": "1"})
                assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"],
                                   EncryptionContext={"t": "1"})["Plaintext"] == dk["Plaintext"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert admin.describe_key(KeyId=keys["mine"])["KeyMetadata"]["KeyState"] == "Enabled"


def test_overload_is_throttling_and_the_health_endpoint_stays_quiet(srv):
    srv.server.inflight += 10_000
    try:
        status, body, rid = call(srv, "ListKeys", LIST)
        assert (status, body["__type"]) == (400, "ThrottlingException") and len(records_for(srv, rid)) == 1
        with urllib.request.urlopen(srv.endpoint + "/health", timeout=10) as resp:
            health = json.loads(resp.read())
    finally:
        srv.server.inflight -= 10_000
    assert set(health) == {"status", "inflight", "audit_backlog"}
    try:
        urllib.request.urlopen(urllib.request.Request(srv.endpoint + "/health", method="POST"), timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code in (400, 404)


# -- a server with hostnames and alias namespaces ------------------------------------------------
@pytest.fixture(scope="module")
def named_srv(tmp_path_factory):
    """``hostnames`` set; ``creator`` may only CreateKey, ``team`` also the aliases alias/team-a/*."""
    cfg = make_config(tmp_path_factory.mktemp("kms-adv-named"), names=("admin", "creator", "team"),
                      hostnames=("127.0.0.1", "KMS.test", "pinned.test:8443"))
    actions = {"creator": ("kms:CreateKey",), "team": ("kms:CreateKey", "kms:*Alias:alias/team-a/*")}
    cfg.principals = [dataclasses.replace(p, account_actions=actions.get(p.name, p.account_actions))
                      for p in cfg.principals]
    thread = ServerThread(cfg).start()
    thread.cfg = cfg
    thread.p = {p.name: p for p in cfg.principals}
    thread.kms = {name: client(thread.endpoint, p) for name, p in thread.p.items()}
    yield thread
    thread.stop()


def test_creating_a_key_does_not_give_alias_names(named_srv):
    """The default policy gives a key's creator kms:* on it; the alias names are
    the identity permissions' (account_actions) to give."""
    creator, team = named_srv.kms["creator"], named_srv.kms["team"]
    mine = creator.create_key()["KeyMetadata"]["KeyId"]
    creator.encrypt(KeyId=mine, Plaintext=b"x")  # the key is fully theirs
    for name in ("alias/lake-payroll", "alias/team-a/x"):
        assert code(lambda name=name: creator.create_alias(AliasName=name, TargetKeyId=mine)) == "AccessDeniedException"
    teams = team.create_key()["KeyMetadata"]["KeyId"]
    team.create_alias(AliasName="alias/team-a/lake", TargetKeyId=teams)
    for name in ("alias/team-b/lake", "alias/team-ab", "alias/lake-payroll"):
        assert code(lambda name=name: team.create_alias(AliasName=name, TargetKeyId=teams)) == "AccessDeniedException"
    # inside its namespace the key policy still decides: not to the creator's key
    assert code(lambda: team.update_alias(AliasName="alias/team-a/lake", TargetKeyId=mine)) == \
        "AccessDeniedException"
    team.update_alias(AliasName="alias/team-a/lake", TargetKeyId=teams)
    team.delete_alias(AliasName="alias/team-a/lake")
    assert named_srv.kms["admin"].list_aliases()["Aliases"] == []


HOSTS = {  # signed Host header -> accepted (hostnames = 127.0.0.1, KMS.test, pinned.test:8443)
    "kms.test": True, "kms.test:9": True, "kms.test:8443": True, "pinned.test:8443": True,
    "pinned.test:9443": False, "pinned.test": False, "kms-other.example:8443": False, "kms.test.evil": False,
    "evil.kms.test": False,
}


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_hostnames_refuse_requests_signed_for_another_server(named_srv, host):
    status, body, rid = send(named_srv, _signed_for_host(named_srv, host), LIST)
    if HOSTS[host]:
        assert status == 200, body
    else:
        assert (status, body.get("__type")) == (400, "InvalidSignatureException"), body
        (rec,) = records_for(named_srv, rid)
        assert (rec["outcome"], rec["principal"], rec["access_key"]) == \
            ("denied", "-", named_srv.p["admin"].access_key_id)


def test_host_matching_with_ports_and_ipv6():
    from encfs.server.protocol import KMSError
    from encfs.server.sigv4 import Verifier

    v = Verifier(REGION, hostnames=("[::1]", "[fd00::1]:8443", "kms.internal"))
    for ok in (["[::1]"], ["[::1]:8443"], ["[FD00::1]:8443"], ["kms.internal:1"], ["kms.internal"]):
        v.check_host(ok)
    for bad in ([], ["[fd00::1]"], ["[fd00::1]:9"], ["::1"], ["kms.internal", "evil.example"], ["kms.internal."]):
        with pytest.raises(KMSError) as exc:
            v.check_host(bad)
        assert exc.value.code == "InvalidSignatureException", bad
    Verifier(REGION).check_host(["anything.example:1"])  # not configured: not checked


def test_hostnames_accept_the_configured_address(named_srv):
    assert named_srv.kms["admin"].list_keys()["Keys"] is not None  # boto3: Host 127.0.0.1:<port>


# -- the same hostile input against PostgreSQL storage ------------------------------------------
@pytest.fixture(scope="module")
def pg_srv(tmp_path_factory, postgres):
    """A server on PostgreSQL (whose text refuses NUL, whose integers are 32-bit)."""
    pytest.importorskip("psycopg")
    import uuid

    data = tmp_path_factory.mktemp("kms-adv-pg")
    cfg = make_config(data)
    cfg.storage = {"type": "postgresql", "url": postgres.createdb("adv_" + uuid.uuid4().hex[:8])}
    thread = ServerThread(cfg).start()
    thread.cfg = cfg
    thread.p = {p.name: p for p in cfg.principals}
    thread.kms = {name: client(thread.endpoint, p) for name, p in thread.p.items()}
    yield thread
    thread.stop()


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_postgres_bad_input_gets_a_specific_400(pg_srv, case):
    operation, params, wanted = BAD_INPUT[case]
    status, body, _ = call(pg_srv, operation, params)
    assert (status, body.get("__type")) == (400, wanted), body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_postgres_fuzzed_bodies_and_blobs_never_cause_a_500(pg_srv, data):
    from encfs.server.protocol import operation_model
    from encfs.server.service import OPERATIONS

    if not hasattr(pg_srv, "blob"):
        key = pg_srv.kms["admin"].create_key()["KeyMetadata"]["KeyId"]
        pg_srv.blob = pg_srv.kms["admin"].encrypt(KeyId=key, Plaintext=b"p")["CiphertextBlob"]
    blob = pg_srv.blob
    if not hasattr(pg_srv, "checked_version"):  # a version beyond PostgreSQL's 32-bit integer
        n = 5 + blob[4]
        huge = blob[:n] + b"\xff\xff\xff\xff" + blob[n + 4:]
        status, out, _ = call(pg_srv, "Decrypt", {"CiphertextBlob": base64.b64encode(huge).decode()})
        assert (status, out["__type"]) == (400, "InvalidCiphertextException"), out
        pg_srv.checked_version = True
    i = data.draw(st.integers(0, len(blob) - 1))
    bad = blob[:i] + data.draw(st.binary(min_size=1, max_size=8).filter(lambda b: b != blob[i:i + 1])) + blob[i + 1:]
    status, out, _ = call(pg_srv, "Decrypt", {"CiphertextBlob": base64.b64encode(bad).decode()})
    assert status == 400 and out["__type"] in ("InvalidCiphertextException", "NotFoundException"), out
    operation = data.draw(st.sampled_from(OPERATIONS))
    members = sorted(operation_model(operation).input_shape.members)
    body = data.draw(st.dictionaries(st.sampled_from(members), _json_values(), max_size=len(members)))
    status, out, _ = call(pg_srv, operation, body)
    assert status in (200, 400), out

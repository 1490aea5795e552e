"""Helpers for the key-server tests: a server on 127.0.0.1 in a thread,
boto3 clients per principal, and hand-signed requests (for tampering)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

from encfs.server.config import DEFAULT_ACCOUNT, Principal, ServerConfig, new_access_key

REGION = "us-east-1"
ACCOUNT = DEFAULT_ACCOUNT
NAMES = ("admin", "alice", "bob", "mallory")


def arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def make_config(data_dir: Path, *, names: tuple[str, ...] = NAMES, **server: Any) -> ServerConfig:
    principals = []
    for name in names:
        akid, secret = new_access_key()
        actions = ("kms:*",) if name == "admin" else ("kms:ListKeys",) if name == "alice" else ()
        principals.append(Principal(name, arn(name), akid, secret, actions))
    cfg = ServerConfig(host="127.0.0.1", port=0, data_dir=data_dir, audit_path=data_dir / "audit.log",
                       storage={"type": "sqlite", "path": str(data_dir / "kms.db")},
                       master_key={"type": "local", "keystore": str(data_dir / "keystore"), "create": True},
                       principals=principals, **server)
    cfg.check()
    return cfg


def client(endpoint: str, principal: Principal, **kw: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("kms", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=principal.access_key_id,
                        aws_secret_access_key=principal.secret,
                        config=Config(retries={"total_max_attempts": 1}), **kw)


def signed_post(endpoint: str, operation: str, params: dict[str, Any], akid: str, secret: str, *,
                when: datetime | None = None, region: str = REGION, service: str = "kms",
                tamper: Any = None) -> tuple[int, dict[str, Any]]:
    """POST a KMS request signed by botocore at ``when``; ``tamper(headers, body)``
    may change it after signing.  Returns (status, JSON body)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = json.dumps(params).encode()
    req = AWSRequest("POST", endpoint + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{operation}"})
    now = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        SigV4Auth(Credentials(akid, secret), service, region).add_auth(req)
    headers = dict(req.headers.items())
    if tamper is not None:
        headers, body = tamper(headers, body)
    http = urllib.request.Request(endpoint + "/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(http, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def audit_lines(cfg: ServerConfig) -> list[dict[str, Any]]:
    path = cfg.audit_path
    if path is None or not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

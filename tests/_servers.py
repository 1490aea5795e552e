"""A moto server on 127.0.0.1 that the tests start and stop themselves, with
a request log: every S3 and KMS request that reaches it over real HTTP is
recorded (method, path, Range, bytes in and out), so tests and the
benchmark can count GETs and ciphertext bytes at the server, not guess them
from the client side.

Used as a pytest plugin (fixtures below) and as a plain module by
benchmarks/bench_s3.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}


@dataclass
class Request:
    method: str
    path: str
    query: str
    service: str  # "s3" or "kms" (KMS requests carry X-Amz-Target: TrentService.*)
    operation: str  # KMS operation, or "" for S3
    range: str | None
    bytes_in: int
    copy_source: str | None = None  # UploadPartCopy / CopyObject
    bytes_out: int = 0
    status: str = ""


class _Counted:
    """WSGI response iterable that counts the body bytes it yields."""

    def __init__(self, body: Any, record: Request) -> None:
        self.body, self.record = body, record

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.body:
            self.record.bytes_out += len(chunk)
            yield chunk

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def _KeepAliveHandler() -> type:
    """werkzeug's handler speaking HTTP/1.1: connections are reused, so a
    test's hundreds of small requests do not each pay a TCP connect."""
    from werkzeug.serving import WSGIRequestHandler

    class KeepAlive(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"

    return KeepAlive


class MotoServer:
    """moto's WSGI app in a thread on 127.0.0.1 and a free port."""

    def __init__(self, ip_address: str = "127.0.0.1", port: int = 0) -> None:
        self.ip_address, self.port = ip_address, port
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip_address}:{self.port}"

    def _app(self, app: Any) -> Any:
        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            record = Request(
                method=environ["REQUEST_METHOD"], path=environ.get("PATH_INFO", ""),
                query=environ.get("QUERY_STRING", ""),
                service="kms" if target.startswith("TrentService.") else "s3",
                operation=target.partition(".")[2], range=environ.get("HTTP_RANGE"),
                bytes_in=int(environ.get("CONTENT_LENGTH") or 0),
                copy_source=environ.get("HTTP_X_AMZ_COPY_SOURCE"),
            )
            if not record.path.startswith("/moto-api"):
                with self._lock:
                    self.log.append(record)

            def start(status: str, headers: Any, exc_info: Any = None) -> Any:
                record.status = status
                return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

            return _Counted(app(environ, start), record)

        return counting

    def start(self) -> MotoServer:
        import logging

        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on stderr
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(self.ip_address, self.port, self._app(app), threaded=True,
                                   request_handler=_KeepAliveHandler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def reset(self) -> None:
        """Forget every bucket and key (moto's reset API) and the log."""
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10)
        self.clear_log()

    def clear_log(self) -> None:
        with self._lock:
            self.log = []

    def requests(self, service: str = "s3", method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.service == service and (method is None or r.method == method)]

    # -- helpers for clients ------------------------------------------------------------
    def s3fs(self, **kwargs: Any) -> Any:
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", token=None, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": REGION}, **kwargs)

    def target_options(self, **kwargs: Any) -> dict[str, Any]:
        """s3fs storage options (secret-free apart from moto's fixed dummies)."""
        return {"key": "testing", "secret": "testing",
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION}, **kwargs}

    def kms_options(self, **kwargs: Any) -> dict[str, Any]:
        return {"region_name": REGION, "endpoint_url": self.endpoint, **kwargs}

    def boto3(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing")


_names = itertools.count()


def unique(prefix: str) -> str:
    """A bucket or alias name no other test of this session uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


@contextlib.contextmanager
def serving(server: MotoServer) -> Iterator[MotoServer]:
    """``server`` started, with moto's dummy credentials in the environment
    (boto3's default chain, the KMS provider and dask workers find them);
    stopped and the environment restored on exit."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- pytest fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with serving(MotoServer()) as server:
        yield server


@pytest.fixture(scope="session")
def _shared_s3fs(moto_server: MotoServer) -> Any:
    # One client for the session: building an s3fs client costs more than
    # most tests that use it.
    return moto_server.s3fs()


@pytest.fixture
def s3(moto_server: MotoServer, _shared_s3fs: Any) -> Iterator[Any]:
    """A plain s3fs filesystem and a fresh bucket (name in ``s3.test_bucket``)."""
    fs = _shared_s3fs
    fs.invalidate_cache()
    bucket = unique("bucket")
    # boto3, not fs.mkdir: s3fs sends LocationConstraint=us-east-1, which S3 refuses.
    moto_server.boto3("s3").create_bucket(Bucket=bucket)
    fs.test_bucket = bucket
    yield fs
    try:
        fs.rm(bucket, recursive=True)
    except FileNotFoundError:
        pass


@pytest.fixture
def kms_key(moto_server: MotoServer) -> str:
    """The URI of a fresh KMS key behind a fresh alias."""
    client = moto_server.boto3("kms")
    arn = client.create_key(Description="encfs test key")["KeyMetadata"]["Arn"]
    alias = "alias/" + unique("lake")
    client.create_alias(AliasName=alias, TargetKeyId=arn)
    return f"aws-kms://{alias}"

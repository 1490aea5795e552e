"""The HTTP server (aiohttp): one POST endpoint speaking KMS, ``GET /health``.

Per request: read the body (at most ``max_body_bytes``; beyond that, 413),
authenticate (SigV4, sigv4.py), parse and validate (protocol.py), run the
operation (service.py), write its audit record (audit.py, grouped fsyncs)
and only then answer.  More than ``max_inflight`` concurrent requests get
ThrottlingException, which AWS SDKs retry with backoff.  SIGTERM/SIGINT stop
accepting connections, let running requests finish (``shutdown_timeout``),
flush the audit trail and close storage.

Logs are JSON lines on stderr (startup, shutdown, internal errors and, with
``log_requests``, one line per request): never a secret, a key, a plaintext
or an encryption-context value.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from aiohttp import web

from ..errors import ConfigurationError
from .audit import AuditSink, FileAuditSink, GroupCommitter, now_iso
from .config import Principal, ServerConfig
from .masterkey import CachingMasterKey, LocalKeystoreMasterKey, MasterKey, MasterKeyError, secret_aad
from .principals import sync_principals
from .protocol import CONTENT_TYPE, TARGET_PREFIX, KMSError, encode_output, parse_input
from .service import Call, Caller, Service
from .sigv4 import Verifier
from .sqlite import SQLiteStorage
from .storage import AccessKey, Storage, StorageUnavailable

log = logging.getLogger("encfs.server")
_ACCESS_KEY_CACHE_SIZE = 1024
_DENIED = {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
           "IncompleteSignatureException", "MissingAuthenticationTokenException", "NotAuthorizedException"}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": now_iso(), "level": record.levelname.lower(), "event": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        return json.dumps(out, sort_keys=True)


def setup_logging(level: int = logging.INFO) -> None:
    if any(isinstance(h.formatter, _JsonFormatter) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def _event(level: int, event: str, **fields: Any) -> None:
    log.log(level, event, extra={"fields": fields})


def open_storage(cfg: ServerConfig, *, shared: bool = False) -> Storage:
    kind = cfg.storage.get("type", "sqlite")
    if kind == "sqlite":
        return SQLiteStorage(cfg.storage["path"], shared=shared)
    if kind == "postgresql":
        from .postgres import PostgresStorage

        return PostgresStorage(str(cfg.storage["url"]), min_size=int(cfg.storage.get("pool_min", 2)),
                               max_size=int(cfg.storage.get("pool_max", 16)))
    raise ConfigurationError(f"storage: unknown type {kind!r} (this build has: sqlite, postgresql)")


def open_master_key(cfg: ServerConfig, *, create: bool) -> MasterKey:
    kind = cfg.master_key.get("type", "local")
    if kind == "local":
        return LocalKeystoreMasterKey(cfg.master_key.get("keystore"), cfg.master_key.get("alias",
                                      "encfs-server/master"), create=create or bool(cfg.master_key.get("create")))
    if kind == "pkcs11":  # a non-extractable AES key in an HSM (docs/SERVER.md, "High availability")
        from .masterkey_pkcs11 import from_config

        return from_config(cfg.master_key, create=create)
    raise ConfigurationError(f"master_key: unknown type {kind!r} (this build has: local, pkcs11)")


async def _check_master(storage: Storage, cfg: ServerConfig, *, create: bool,
                        master: MasterKey | None = None) -> MasterKey:
    """The master key (``master``, else the config's), checked against the
    one storage was written under (recorded on the first start, when
    ``create`` may make it)."""
    async with storage.transaction() as tx:
        known = await tx.get_meta("master_key_id")
    master = master or open_master_key(cfg, create=create and known is None)
    if known is not None and known != master.key_id:
        raise ConfigurationError(f"master_key: storage was written under {known}, not {master.key_id}")
    if known is None:
        if not create:
            raise ConfigurationError("master_key: storage has not been initialised")
        async with storage.transaction(write=True) as tx:
            await tx.set_meta("master_key_id", master.key_id)
    return master


def _default_sink(cfg: ServerConfig, storage: Storage) -> AuditSink:
    """The audit log file; with PostgreSQL, the one chain every replica shares."""
    if cfg.storage.get("type") == "postgresql" and hasattr(storage, "connection"):
        from .audit_pg import PostgresAuditSink

        return PostgresAuditSink(storage)  # type: ignore[arg-type]
    return FileAuditSink(cfg.audit_path or cfg.data_dir / "audit.log", sync=cfg.audit_sync,
                         interval=cfg.audit_sync_interval)


class KeyServer:
    """One server process: storage, master key, audit, HTTP."""

    def __init__(self, cfg: ServerConfig, *, storage: Storage | None = None, master: MasterKey | None = None,
                 sink: AuditSink | None = None, clock: Callable[[], float] = time.time,
                 listen_socket: socket.socket | None = None, worker: int | None = None) -> None:
        self.cfg = cfg
        #: Index of this worker process (None: the server is one process).
        self.worker = worker
        self.listen_socket = listen_socket
        self.storage = storage or open_storage(cfg, shared=worker is not None)
        self._master = master
        self.sink = sink or _default_sink(cfg, self.storage)
        self.audit = GroupCommitter(self.sink)
        self.clock = clock
        self.verifier = Verifier(cfg.region, skew=cfg.clock_skew_seconds, clock=clock, hostnames=cfg.hostnames)
        self.principals: dict[str, Principal] = {}
        # Access keys read from storage, reused for at most this long (the
        # principal revocation bound, docs/SERVER.md "High availability"):
        # found ones only (an unknown key is looked up every time, so a new
        # principal works at once), at most _ACCESS_KEY_CACHE_SIZE of them.
        ttl = cfg.access_key_cache_seconds
        self.access_key_ttl = float(ttl if ttl is not None else (1.0 if self.storage.shared else 0.0))
        self._access_keys: dict[str, tuple[float, AccessKey]] = {}
        self.service: Service | None = None
        self.inflight = 0
        self._runner: web.ServerRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port = cfg.port

    @property
    def endpoint(self) -> str:
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        return f"{'https' if self.cfg.tls else 'http'}://{host}:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self.storage.open()
        try:
            await self._start()
        except BaseException:
            await self.storage.close()  # releases the database lock for a retry
            raise

    async def _start(self) -> None:
        master = await _check_master(self.storage, self.cfg, create=self.worker is None, master=self._master)
        self.master = master if isinstance(master, CachingMasterKey) else CachingMasterKey(master)
        self.service = Service(self.storage, self.master, region=self.cfg.region, account=self.cfg.account,
                               min_deletion_days=self.cfg.min_deletion_days, clock=self.clock)
        if self.worker is None:  # workers: their supervisor did it once, before they started
            synced = await sync_principals(self.storage, self.master, self.cfg, self.clock)
            _event(logging.INFO, "principals", generation=synced.generation, synced=synced.synced,
                   changes=len(synced.differences))
        self.principals = {p.access_key_id: Principal(p.name, p.arn, p.access_key_id, "", p.account_actions)
                           for p in self.cfg.principals}
        loop = asyncio.get_running_loop()
        limit = self.cfg.max_body_bytes

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=limit)

        # aiohttp's low-level server: one handler, no router or middlewares
        # on the hot path.
        self._runner = web.ServerRunner(web.Server(self._dispatch, request_factory=request_factory),
                                        handle_signals=False, shutdown_timeout=self.cfg.shutdown_timeout)
        await self._runner.setup()
        ctx = None
        if self.cfg.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        if self.listen_socket is not None:  # a worker: the supervisor's socket, shared by all workers
            site: web.BaseSite = web.SockSite(self._runner, self.listen_socket, ssl_context=ctx)
            self.port = self.listen_socket.getsockname()[1]
            await site.start()
        else:
            site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, ssl_context=ctx, backlog=1024,
                               reuse_address=True)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]
        if self.worker in (None, 0):  # one sweeper per server
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        # What startup loaded (botocore's model, modules) lives as long as the
        # server: keep it out of every later full garbage collection.
        gc.freeze()
        # A request allocates a few hundred short-lived objects: with the
        # default threshold (700) the young generation is collected several
        # times per request; this trades a few MB of garbage for that work.
        gc.set_threshold(50_000, 20, 100)
        _event(logging.INFO, "started", endpoint=self.endpoint, storage=repr(self.storage), master_key=master.key_id,
               audit=repr(self.sink), principals=len(self.principals), worker=self.worker,
               event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._runner is not None:
            await self._runner.cleanup()  # stops listening, lets running requests finish
        await self.audit.flush()
        await self.sink.close()
        await self.storage.close()
        self.master.close()
        _event(logging.INFO, "stopped", endpoint=self.endpoint, worker=self.worker,
               audit_records=self.audit.records, audit_batches=self.audit.batches)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sweep_seconds)
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - retried at the next sweep
                _event(logging.ERROR, "sweep failed", error=type(exc).__name__)

    async def sweep(self, now: float | None = None) -> list[tuple[str, str]]:
        """Run due deletions and rotations, each audited."""
        assert self.service is not None
        done = await self.service.run_due(now)
        for action, arn in done:
            await self.audit.submit({"time": now_iso(), "principal": "encfs-server", "action": action,
                                     "key": f"aws-kms://{arn}", "outcome": "success", "automatic": True})
        return done

    # -- requests -----------------------------------------------------------------------
    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/health" and request.method == "GET":
            return await self._health(request)
        return await self._handle(request)

    async def _health(self, request: web.BaseRequest) -> web.Response:
        try:
            await self.storage.schema_version()
        except Exception:  # noqa: BLE001 - reported, not raised
            return web.json_response({"status": "unavailable"}, status=503)
        return web.json_response({"status": "ok", "inflight": self.inflight, "audit_backlog": self.audit.backlog})

    async def _access_key(self, access_key_id: str) -> AccessKey | None:
        now = time.monotonic()
        hit = self._access_keys.get(access_key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.storage.transaction() as tx:
            ak = await tx.get_access_key(access_key_id)
        if self.access_key_ttl > 0:
            if ak is None:
                self._access_keys.pop(access_key_id, None)
            else:
                if len(self._access_keys) >= _ACCESS_KEY_CACHE_SIZE:
                    self._access_keys.clear()  # bounded: rare, and only costs round trips
                self._access_keys[access_key_id] = (now + self.access_key_ttl, ak)
        return ak

    async def _authenticate(self, request: web.BaseRequest, body: bytes, record: dict[str, Any]) -> Caller:
        claims = self.verifier.parse(request.headers)
        # Claimed, not yet proven (and not a secret): a refused sign-in is
        # still attributable to the access key it tried.
        record["access_key"] = _untrusted(claims.access_key_id)
        self.verifier.check_claims(claims)
        self.verifier.check_host(request.headers.getall("Host", []))
        if "x-amz-target" not in claims.signed_headers:
            raise KMSError("InvalidSignatureException", "the x-amz-target header must be signed")
        ak = None
        if claims.access_key_id.isascii() and claims.access_key_id.isprintable():
            # (header bytes that are not UTF-8 arrive as lone surrogates, which
            # the database driver cannot even encode: no such key, not a 500)
            ak = await self._access_key(claims.access_key_id)
        if ak is None:
            # Principals come from storage, which every replica shares (a
            # sync through any of them applies to all): not from this
            # process's config (encfs/server/principals.py).
            raise KMSError("UnrecognizedClientException", "The security token included in the request is invalid.")
        try:
            secret = self.master.unwrap(ak.sealed_secret, secret_aad(ak.access_key_id)).decode()
        except MasterKeyError:
            raise KMSError("KMSInternalException", "a stored secret could not be unsealed") from None
        self.verifier.verify(claims, secret, method=request.method, host=request.headers.get("Host", ""),
                             path_qs=request.raw_path, headers=request.headers, body=body)
        actions = ak.account_actions
        if actions is None:  # a row from before they were stored: the config's (synced at the next start)
            principal = self.principals.get(claims.access_key_id)
            actions = principal.account_actions if principal is not None else ()
        return Caller(arn=ak.principal_arn, access_key_id=ak.access_key_id, account_actions=actions)

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        h = os.urandom(16).hex()  # a random (version 4 layout) request id, cheaper than uuid.uuid4()
        rid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"
        started = time.perf_counter()
        target = request.headers.get("X-Amz-Target", "")
        operation = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else target or "-"
        operation = _untrusted(operation)
        call: Call | None = None
        record: dict[str, Any] = {"time": now_iso(), "principal": "-", "action": operation, "request_id": rid,
                                  "source": request.remote}
        self.inflight += 1
        try:
            if self.inflight > self.cfg.max_inflight or self.audit.backlog > 8 * self.cfg.max_inflight:
                raise KMSError("ThrottlingException", "Rate exceeded")
            if request.method != "POST" or request.path != "/":
                raise KMSError("UnknownOperationException", "send KMS requests as POST /", 404)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise KMSError("ValidationException", f"request body larger than {self.cfg.max_body_bytes} bytes",
                               413) from None
            caller = await self._authenticate(request, body, record)
            record["principal"], record["access_key"] = caller.arn, caller.access_key_id
            if not target.startswith(TARGET_PREFIX):
                raise KMSError("UnknownOperationException", "X-Amz-Target must be TrentService.<Operation>")
            call = Call(operation=operation, params=parse_input(operation, body), caller=caller)
            assert self.service is not None
            result = await self.service.handle(call)
            status, payload = 200, encode_output(result)
            record.update(outcome="success", error=None)
        except KMSError as exc:
            status, payload = exc.status, exc.body()
            record.update(outcome="denied" if exc.code in _DENIED else "failure", error=exc.code)
        except StorageUnavailable as exc:
            # The database is restarting or failing over: a retryable 503
            # (AWS SDKs retry it), never a half-applied change.
            _event(logging.WARNING, "storage unavailable", request_id=rid, operation=operation,
                   error=type(exc).__name__)
            err = KMSError("DependencyTimeoutException", "the key store is unavailable; retry", 503)
            status, payload = err.status, err.body()
            record.update(outcome="failure", error=err.code)
        except Exception as exc:  # noqa: BLE001 - never a traceback (or a secret) to the client
            _event(logging.ERROR, "internal error", request_id=rid, operation=operation, error=type(exc).__name__)
            err = KMSError("KMSInternalException", "internal error", 500)
            status, payload = err.status, err.body()
            record.update(outcome="failure", error=err.code)
        finally:
            self.inflight -= 1
        if call is not None:
            if call.key_arn:
                record["key"] = f"aws-kms://{call.key_arn}"
            if call.version is not None:
                record["version"] = str(call.version)
            if call.context_keys:
                record["context_keys"] = call.context_keys
            if call.grant_id:
                record["grant"] = call.grant_id
            record.update({k: v for k, v in call.details.items() if v is not None})
        try:
            await self.audit.submit(record)
        except Exception as exc:  # noqa: BLE001 - fail closed: no answer without its audit record
            _event(logging.ERROR, "audit write failed", request_id=rid, error=type(exc).__name__)
            err = KMSError("KMSInternalException", "the request could not be audited", 500)
            status, payload = err.status, err.body()
        if self.cfg.log_requests:
            _event(logging.INFO, "request", request_id=rid, operation=operation, principal=record["principal"],
                   outcome=record.get("outcome"), error=record.get("error"), status=status,
                   ms=round((time.perf_counter() - started) * 1000, 3))
        return web.Response(body=payload, status=status, content_type=CONTENT_TYPE,
                            headers={"x-amzn-RequestId": rid})


def _untrusted(value: str, limit: int = 128) -> str:
    """Unauthenticated header text headed for the audit record and the log:
    printable ASCII, at most ``limit`` characters before escaping (non-UTF-8
    header bytes arrive as lone surrogates)."""
    if value.isascii() and value.isprintable() and len(value) <= limit:
        return value
    return value[:limit].encode("ascii", "backslashreplace").decode("ascii")


def _run_loop(coro: Any) -> Any:
    """Run ``coro`` on a fresh event loop (uvloop's when installed: it cuts
    the per-request cost of the HTTP layer)."""
    try:
        import uvloop
    except ModuleNotFoundError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run(cfg: ServerConfig, *, on_ready: Callable[[str], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; ``on_ready(endpoint)`` once listening.
    Returns the exit status."""
    if cfg.workers <= 1:
        _run_loop(serve(cfg, on_ready=on_ready))
        return 0
    if not hasattr(os, "fork"):
        raise ConfigurationError("server: workers > 1 needs os.fork (POSIX); use workers = 1 here")
    return _supervise(cfg, on_ready)


async def _prepare(cfg: ServerConfig) -> Storage:
    """Migrations, master key and principals, once, before any worker starts.
    Returns the storage, closed but still holding its lock (SQLite)."""
    storage = open_storage(cfg)
    await storage.open()
    try:
        master = await _check_master(storage, cfg, create=True)
        await sync_principals(storage, master, cfg)
    finally:
        if isinstance(storage, SQLiteStorage):
            await storage.close(keep_lock=True)
        else:
            await storage.close()
    return storage


def _die_with_parent() -> None:
    """Linux: this worker gets SIGTERM when its supervisor dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _supervise(cfg: ServerConfig, on_ready: Callable[[str], None] | None) -> int:
    """``cfg.workers`` processes serving one listening socket (one per core:
    a single Python process uses one core).  They share the storage and the
    audit log (appends are serialised by a file lock and re-read the chain's
    tail), so every request is still one record in one chain."""
    storage = _run_loop(_prepare(cfg))
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.create_server((cfg.host, cfg.port), family=family, backlog=2048)
    port = sock.getsockname()[1]
    children: list[int] = []
    for index in range(cfg.workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                _die_with_parent()
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _run_loop(serve(cfg, listen_socket=sock, worker=index))
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported, then this process ends
                _event(logging.ERROR, "worker failed", worker=index, error=type(exc).__name__)
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()
    stopping = False

    def stop_all(signum: int = signal.SIGTERM, frame: Any = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    if on_ready is not None:
        on_ready(f"{'https' if cfg.tls else 'http'}://{host}:{port}")  # the socket already queues connections
    status = 0
    while children:
        pid, wait_status = os.waitpid(-1, 0)
        if pid in children:
            children.remove(pid)
        if os.waitstatus_to_exitcode(wait_status) != 0:
            status = 1
        if not stopping:  # a worker ended on its own: stop the server (a supervisor such as systemd restarts it)
            _event(logging.ERROR, "worker exited", pid=pid)
            status = 1
            stop_all()
    if isinstance(storage, SQLiteStorage):
        _run_loop(storage.close())  # the lock
    return status


async def serve(cfg: ServerConfig, *, on_ready: Callable[[str], None] | None = None,
                listen_socket: socket.socket | None = None, worker: int | None = None) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    server = KeyServer(cfg, listen_socket=listen_socket, worker=worker)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # Windows' event loops: a plain handler hands over to the loop
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    try:
        if on_ready is not None:
            on_ready(server.endpoint)
        await stop.wait()
    finally:
        _event(logging.INFO, "stopping", endpoint=server.endpoint)
        await server.stop()


class ServerThread:
    """A server on its own event loop in a background thread (tests, notebooks)."""

    def __init__(self, cfg: ServerConfig, **kwargs: Any) -> None:
        self.cfg = cfg
        self.kwargs = kwargs
        self.server: KeyServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ServerThread:
        ready: Future[None] = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self.server = KeyServer(self.cfg, **self.kwargs)
                loop.run_until_complete(self.server.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                ready.set_exception(exc)
                return
            ready.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self.server.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="encfs-key-server", daemon=True)
        self._thread.start()
        ready.result(timeout=60)
        return self

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return self.server.endpoint

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop (e.g. ``server.sweep(now)``)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = self._thread = None

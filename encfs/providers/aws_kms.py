"""AWS KMS provider: ``aws-kms://<key id | alias/name | key ARN | alias ARN>``.

Data keys come from ``GenerateDataKey`` (the first root key of a write) or
are wrapped with ``Encrypt`` (every further root key); ``Decrypt`` unwraps
them.  The ``EncryptionContext`` is the coarse service context the keyring
hands us (header context without the object path, FORMAT.md section 4.1):
KMS binds it to the wrapped key, while the header MAC binds the exact path.

Wrapped entries always record the key **ARN** (what KMS returns as
``KeyId``), never an alias: an alias can be re-pointed, an ARN cannot, and
the ARN names the region the entry must be decrypted in.

Reading is strict by default: an entry is tried only if its ARN is one of
the configured keys, and ``Decrypt`` always pins ``KeyId`` to that ARN, so
a planted entry naming some other key is never sent to KMS.  Discovery
mode (``discovery=True``) additionally tries entries whose ARN is in
``discovery_key_arns`` or whose account is in ``discovery_accounts``; it
must be asked for explicitly and always has an allow-list.

Options are secret-free (they travel in fsspec storage options and to dask
workers); credentials come from boto3's default chain or ``profile_name``.
Each process builds its own clients lazily.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import (
    AccessDeniedError,
    ConfigurationError,
    EncfsError,
    IntegrityError,
    KeyNotFoundError,
    KeyServiceError,
    KeyStateError,
    KeyUnavailableError,
)
from ..format import DEK_BYTES, WrappedKey
from .base import KeyInfo, KeyProvider, KeyRef

#: Most KMS clients one provider keeps (one per region it was asked to use).
MAX_CLIENTS = 8

_KEY_ARN = re.compile(r"^arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):key/(?P<id>[A-Za-z0-9-]+)$")
_ALIAS_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:alias/.+$")

#: AWS error code -> (encfs error class, short reason).  Codes not listed
#: become a plain KeyServiceError.  The AWS message is kept in ours because
#: it names the key and the policy problem, never key material.
_ERRORS: dict[str, tuple[type[EncfsError], str]] = {
    "NotFoundException": (KeyNotFoundError, "key not found"),
    "InvalidArnException": (KeyNotFoundError, "not a valid key ARN"),
    "DisabledException": (KeyStateError, "key is disabled"),
    "KMSInvalidStateException": (KeyStateError, "key state forbids this (pending deletion or import?)"),
    "InvalidKeyUsageException": (KeyStateError, "key cannot be used for encryption"),
    "KeyUnavailableException": (KeyUnavailableError, "key is unavailable (custom key store)"),
    "AccessDeniedException": (AccessDeniedError, "access denied"),
    "InvalidGrantTokenException": (AccessDeniedError, "invalid grant token"),
    "UnrecognizedClientException": (AccessDeniedError, "credentials not recognised"),
    "InvalidSignatureException": (AccessDeniedError, "request signature rejected"),
    "ExpiredTokenException": (AccessDeniedError, "credentials expired"),
    "InvalidClientTokenId": (AccessDeniedError, "credentials not recognised"),
    "ThrottlingException": (KeyUnavailableError, "throttled (retries exhausted)"),
    "LimitExceededException": (KeyUnavailableError, "request rate limit exceeded (retries exhausted)"),
    "KMSInternalException": (KeyUnavailableError, "internal service error (retries exhausted)"),
    "DependencyTimeoutException": (KeyUnavailableError, "service dependency timed out (retries exhausted)"),
    "ServiceUnavailable": (KeyUnavailableError, "service unavailable (retries exhausted)"),
    # The wrapped blob does not authenticate under the pinned key and context,
    # or names another key: for the reader this is tampering, not a key problem.
    "InvalidCiphertextException": (IntegrityError, ""),
    "IncorrectKeyException": (IntegrityError, ""),
}

class _WithholdKeyMaterial(logging.Filter):
    """botocore logs whole request and response bodies at DEBUG level, and
    KMS bodies carry data keys (``Plaintext``).  This filter, installed on
    botocore's body-logging loggers, withholds such records.  Filters run
    only for records that pass the level check, so it costs nothing unless
    someone turns botocore debugging on."""

    MARKERS = ('"Plaintext"', "'Plaintext'", "Plaintext=")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to fix
            return True
        if any(m in text for m in self.MARKERS):
            record.msg, record.args = "[encfs: record withheld: it carries AWS KMS key material]", ()
        return True


_LOG_FILTER = _WithholdKeyMaterial()
_BODY_LOGGERS = ("botocore.parsers", "botocore.endpoint", "botocore.hooks", "botocore.regions",
                 "botocore.retryhandler", "botocore.client")


def _install_log_filter() -> None:
    for name in _BODY_LOGGERS:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


#: boto3 sessions shared per process and profile (see _new_client).
_SESSION_LOCK = threading.Lock()
_SESSIONS: dict[str, Any] = {}  # profile name ("" = default chain) -> boto3 Session
_SESSIONS_PID = [os.getpid()]  # the process _SESSIONS belongs to

#: Codes worth retrying with backoff: throttling and transient server faults.
_RETRYABLE = frozenset({
    "ThrottlingException", "LimitExceededException", "KMSInternalException",
    "DependencyTimeoutException", "ServiceUnavailable", "RequestLimitExceeded",
    "InternalFailure", "RequestTimeout",
})


def _iso(value: Any) -> str:
    """A botocore timestamp (datetime) as ISO 8601 text; '' for None."""
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _normalise_alias(alias: str) -> str:
    alias = alias.removeprefix("aws-kms://")
    return alias if alias.startswith("alias/") else f"alias/{alias}"


def _key_id(arn: str) -> str:
    """The bare key id of a key ARN.  Administrative calls send it (with the
    client of the ARN's region) because some KMS emulators accept only ids."""
    parsed = parse_key_arn(arn)
    return parsed["id"] if parsed else arn


def parse_key_arn(arn: str) -> dict[str, str] | None:
    """``{"partition", "region", "account", "id"}`` of a KMS key ARN, else None."""
    m = _KEY_ARN.match(arn)
    return m.groupdict() if m else None


class AwsKmsProvider(KeyProvider):
    """Root keys held in AWS KMS.

    Parameters (all keyword-only, all secret-free)
    ----------
    region_name, profile_name, endpoint_url:
        Where and as whom to call KMS (boto3 default chain otherwise).
        ``endpoint_url`` may list several endpoints (replicas of a key
        server, docs/SERVER.md "High availability"): calls go to one, and a
        connection failure or a 5xx answer moves every later call to the
        next, so a dead replica costs a retry, not a failed object.
        Entries are always decrypted in the region named by their ARN.
    discovery, discovery_accounts, discovery_key_arns, discovery_partition, discovery_regions:
        Discovery mode: also unwrap entries of keys not configured on the
        filesystem, but only those whose ARN is listed or whose account is,
        and whose region is ``region_name``, one of ``discovery_regions`` or
        the region of a listed ARN: an object must not choose where (and in
        how many regions) encfs opens KMS clients.
    max_attempts, backoff_base, backoff_max:
        Attempts per call on throttling or transient faults, with full-jitter
        exponential backoff.
    resolve_ttl:
        Seconds an alias -> ARN resolution is remembered (an alias can be
        re-pointed; a stale answer only affects which key new objects use).
    kms_client:
        An injected boto3 KMS client (tests); used for every region.
    clock, sleep:
        Injectable time source and sleeper (tests need no real waiting).
    """

    scheme = "aws-kms"

    def __init__(
        self,
        *,
        region_name: str | None = None,
        profile_name: str | None = None,
        endpoint_url: str | Sequence[str] | None = None,
        discovery: bool = False,
        discovery_accounts: Iterable[str] | None = None,
        discovery_key_arns: Iterable[str] | None = None,
        discovery_partition: str = "aws",
        discovery_regions: Iterable[str] | None = None,
        max_attempts: int = 5,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        resolve_ttl: float = 300.0,
        kms_client: Any = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.region_name = region_name
        self.profile_name = profile_name
        endpoints = [endpoint_url] if isinstance(endpoint_url, str) else list(endpoint_url or ())
        if not all(isinstance(e, str) and e for e in endpoints):
            raise ConfigurationError("endpoint_url must be a URL or a list of URLs")
        self.endpoint_url = endpoint_url if isinstance(endpoint_url, str) or endpoint_url is None else endpoints
        self._endpoints: list[str | None] = list(endpoints) or [None]
        #: Index into _endpoints of the endpoint calls go to (failover moves it).
        self._active = 0
        self.discovery = bool(discovery)
        self.discovery_accounts = frozenset(str(a) for a in (discovery_accounts or ()))
        self.discovery_key_arns = frozenset(discovery_key_arns or ())
        self.discovery_partition = discovery_partition
        for arn in self.discovery_key_arns:
            if parse_key_arn(arn) is None:
                raise ConfigurationError(f"discovery_key_arns must hold key ARNs, not {arn!r}")
        for acct in self.discovery_accounts:
            if not re.fullmatch(r"\d{12}", acct):
                raise ConfigurationError(f"discovery_accounts must hold 12-digit AWS account ids, not {acct!r}")
        if self.discovery and not (self.discovery_accounts or self.discovery_key_arns):
            # Unfiltered discovery would decrypt with any key the credentials
            # reach, including one an attacker planted an entry for.
            raise ConfigurationError("discovery mode needs discovery_accounts or discovery_key_arns")
        if not self.discovery and (self.discovery_accounts or self.discovery_key_arns or discovery_regions):
            raise ConfigurationError("discovery_accounts/discovery_key_arns/discovery_regions need discovery=True")
        # Regions discovery may open clients in (finding 7 of issue 10): the
        # configured ones only, never one an object names.
        self.discovery_regions = frozenset(
            {str(r) for r in (discovery_regions or ())}
            | {parse_key_arn(a)["region"] for a in self.discovery_key_arns}  # type: ignore[index]
            | ({region_name} if region_name else set())
        )
        if int(max_attempts) < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        self.max_attempts = int(max_attempts)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.resolve_ttl = float(resolve_ttl)
        self._clock = clock or time.monotonic
        self._sleep = sleep or time.sleep
        self._injected = kms_client
        self._lock = threading.Lock()
        #: KMS clients per region, least recently used first; at most
        #: MAX_CLIENTS (each holds a connection pool and parsed models).
        self._clients: OrderedDict[str | None, Any] = OrderedDict()
        self._pid = os.getpid()
        self._resolved: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        parts = [f"region_name={self.region_name!r}"]
        if self.endpoint_url:
            parts.append(f"endpoint_url={self.endpoint_url!r}")
        if self.discovery:
            parts.append("discovery=True")
        return f"AwsKmsProvider({', '.join(parts)})"

    # -- clients -------------------------------------------------------------------
    def _client(self, region: str | None = None) -> Any:
        if self._injected is not None:
            return self._injected
        with self._lock:
            if os.getpid() != self._pid:
                # A forked child must not share the parent's HTTP connections.
                self._clients.clear()
                self._pid = os.getpid()
            key = region or self.region_name
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = self._new_client(key, self._endpoints[self._active])
                while len(self._clients) > MAX_CLIENTS:
                    # Dropped, not closed: another thread may be mid-call on it.
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(key)
            return client

    def _new_client(self, region: str | None, endpoint_url: str | None = None) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ModuleNotFoundError as exc:
            raise ConfigurationError("the aws-kms provider needs boto3: pip install 'encfs[aws]'") from exc
        _install_log_filter()
        # Retries are ours (see _call), so botocore makes one attempt only.
        config = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                        connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                        user_agent_extra="encfs")
        with _SESSION_LOCK:  # boto3 sessions are not thread-safe
            if _SESSIONS_PID[0] != os.getpid():
                _SESSIONS.clear()
                _SESSIONS_PID[0] = os.getpid()
            # One session per profile and process: it caches the service model
            # and resolved credentials, so each filesystem instance (dask
            # builds many) does not parse the KMS model or query IMDS again.
            try:
                session = _SESSIONS.get(self.profile_name or "")
                if session is None:
                    session = boto3.session.Session(profile_name=self.profile_name)
                    _SESSIONS[self.profile_name or ""] = session
                return session.client("kms", region_name=region or self.region_name,
                                      endpoint_url=endpoint_url, config=config)
            except Exception as exc:  # e.g. NoRegionError, unknown profile
                raise ConfigurationError(f"cannot create an AWS KMS client: {exc}") from exc

    @staticmethod
    def _region_of(key: str) -> str | None:
        parsed = parse_key_arn(key)
        if parsed:
            return parsed["region"]
        m = re.match(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):", key)
        return m.group(1) if m else None

    # -- calls, retries, error translation -------------------------------------------
    def _call(self, method: str, key: str, operation: str, **params: Any) -> dict[str, Any]:
        """Call KMS ``method`` with retries; translate failures at this boundary."""
        # The client first: without boto3 it raises the "pip install 'encfs[aws]'" hint.
        region = self._region_of(key) if key else None
        client = self._client(region)
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            NoCredentialsError,
            ParamValidationError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )

        api = "".join(w.capitalize() for w in method.split("_"))  # decrypt -> Decrypt, for messages
        uri = f"{self.scheme}://{key}" if key else None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return getattr(client, method)(**params)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if (code in _RETRYABLE or status >= 500) and attempt < self.max_attempts:
                    if status >= 500:
                        client = self._failover(client, region)
                    self._backoff(attempt)
                    continue
                raise self._translate(code, exc, key, operation, api) from exc
            except (BotoConnectionError, HTTPClientError) as exc:
                if attempt < self.max_attempts:
                    client = self._failover(client, region)
                    self._backoff(attempt)
                    continue
                raise KeyUnavailableError(
                    f"AWS KMS {api} for {operation} of key {key or '-'} failed: cannot reach the service ({exc})",
                    key=uri, operation=operation) from exc
            except NoCredentialsError as exc:
                raise AccessDeniedError(
                    f"AWS KMS {api} for {operation} of key {key or '-'}: no AWS credentials found",
                    key=uri, operation=operation) from exc
            except ParamValidationError as exc:
                if "Plaintext" in params:
                    # botocore's message may quote parameter values: never a data key.
                    raise ConfigurationError(f"invalid AWS KMS {api} request for key {key or '-'}") from None
                raise ConfigurationError(f"invalid AWS KMS {api} request for key {key or '-'}: {exc}") from exc
            except BotoCoreError as exc:
                raise KeyServiceError(f"AWS KMS {api} for {operation} of key {key or '-'} failed: {exc}",
                                      key=uri, operation=operation) from exc
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _failover(self, failed: Any, region: str | None) -> Any:
        """With several endpoints: move every later call off the one that
        failed (unless another thread already did) and return the client to
        retry with."""
        if len(self._endpoints) > 1 and self._injected is None:
            with self._lock:
                if self._clients.get(region or self.region_name) is failed:
                    self._active = (self._active + 1) % len(self._endpoints)
                    self._clients.clear()  # every region's client: rebuilt on the next endpoint
        return self._client(region)

    def _backoff(self, attempt: int) -> None:
        # Full jitter (AWS architecture blog): spreads retrying clients apart.
        self._sleep(random.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))))

    @staticmethod
    def _translate(code: str, exc: Any, key: str, operation: str, api: str) -> EncfsError:
        cls, reason = _ERRORS.get(code, (KeyServiceError, ""))
        if cls is IntegrityError:
            return IntegrityError()
        aws_message = exc.response.get("Error", {}).get("Message", "")
        what = f"AWS KMS {api} for {operation} of key {key or '-'}"
        text = f"{what}: {reason or code or 'failed'} ({code}: {aws_message})" if aws_message else f"{what}: {reason or code}"
        return cls(text, key=f"aws-kms://{key}" if key else None, operation=operation)  # type: ignore[call-arg]

    # -- key resolution ----------------------------------------------------------------
    def resolve(self, ref: KeyRef) -> str:
        """The key ARN of ``ref`` (aliases and bare ids via DescribeKey, cached)."""
        name = ref.name
        if parse_key_arn(name):
            return name
        now = self._clock()
        with self._lock:
            hit = self._resolved.get(name)
        if hit is not None and now - hit[1] < self.resolve_ttl:
            return hit[0]
        meta = self._call("describe_key", name, "resolve", KeyId=name)["KeyMetadata"]
        arn = meta["Arn"]
        with self._lock:
            self._resolved[name] = (arn, now)
        return arn

    def _forget(self, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._resolved.clear()
            else:
                self._resolved.pop(name, None)

    # -- data keys -------------------------------------------------------------------
    @staticmethod
    def _context(context: Mapping[str, str]) -> dict[str, Any]:
        return {"EncryptionContext": dict(context)} if context else {}

    @staticmethod
    def _version(resp: Mapping[str, Any]) -> str:
        mid = resp.get("KeyMaterialId") or ""
        return mid if mid.isascii() and len(mid) <= 64 else ""

    def _entry(self, ref: KeyRef, resp: Mapping[str, Any], operation: str) -> WrappedKey:
        arn = resp.get("KeyId", "")
        if not parse_key_arn(arn):
            raise KeyServiceError(f"AWS KMS returned no key ARN for {operation} with key {ref}",
                                  key=str(ref), operation=operation)
        return WrappedKey(self.scheme, arn, self._version(resp), bytes(resp["CiphertextBlob"]))

    def generate_data_key(self, ref: KeyRef, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        resp = self._call("generate_data_key", ref.name, "generate_data_key",
                          KeyId=ref.name, KeySpec="AES_256", **self._context(context))
        dek = bytes(resp["Plaintext"])
        if len(dek) != DEK_BYTES:
            raise KeyServiceError(f"AWS KMS returned a data key of the wrong size for {ref}",
                                  key=str(ref), operation="generate_data_key")
        return dek, self._entry(ref, resp, "generate_data_key")

    def wrap(self, ref: KeyRef, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        resp = self._call("encrypt", ref.name, "wrap", KeyId=ref.name, Plaintext=bytes(dek), **self._context(context))
        return self._entry(ref, resp, "wrap")

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if wrapped.provider != self.scheme or not parse_key_arn(wrapped.key_id):
            raise IntegrityError()
        # KeyId pins the key: KMS refuses a blob made under any other key.
        resp = self._call("decrypt", wrapped.key_id, "unwrap", CiphertextBlob=wrapped.wrapped,
                          KeyId=wrapped.key_id, **self._context(context))
        dek = bytes(resp.get("Plaintext", b""))
        if resp.get("KeyId") != wrapped.key_id or len(dek) != DEK_BYTES:
            raise IntegrityError()
        return dek

    def allows(self, wrapped: WrappedKey, refs: list[KeyRef]) -> bool:
        if wrapped.provider != self.scheme:
            return False
        parsed = parse_key_arn(wrapped.key_id)
        if parsed is None:
            return False
        if self.discovery and self._discovery_region(parsed["region"]) and (
            wrapped.key_id in self.discovery_key_arns
            or (parsed["partition"] == self.discovery_partition and parsed["account"] in self.discovery_accounts)
        ):
            return True
        failure: KeyServiceError | None = None
        for ref in refs:
            if ref.scheme != self.scheme:
                continue
            if ref.name == wrapped.key_id:
                return True
            try:
                if self.resolve(ref) == wrapped.key_id:
                    return True
            except KeyNotFoundError:
                continue  # a configured alias that no longer exists allows nothing
            except KeyServiceError as exc:
                failure = exc
        if failure is not None:
            # We could not tell (KMS unreachable, access denied): say so
            # rather than "no usable key".
            raise failure
        return False

    def _discovery_region(self, region: str) -> bool:
        """Whether discovery may call KMS in ``region``: a configured region,
        or (none configured) the default client's own region."""
        if self.discovery_regions:
            return region in self.discovery_regions
        if self._injected is not None:
            return True  # one injected client serves every region anyway
        return region == self._client(None).meta.region_name

    # -- description and administration ------------------------------------------------
    def describe(self, ref: KeyRef) -> KeyInfo:
        meta = self._call("describe_key", ref.name, "describe", KeyId=ref.name)["KeyMetadata"]
        info = self._info(meta)
        if meta.get("KeyManager") == "CUSTOMER" and meta.get("KeyState") not in ("PendingDeletion",):
            try:
                status = self.rotation_status(KeyRef(self.scheme, info.key_id))
            except KeyServiceError:
                return info  # rotation is decoration (denied, unsupported key spec, ...)
            info.extra["rotation_enabled"] = status["automatic"]
            for src, dst in (("period_days", "rotation_period_days"), ("next_rotation", "next_rotation"),
                             ("on_demand_started", "last_rotation")):
                if src in status:
                    info.extra[dst] = status[src]
        return info

    def _info(self, meta: Mapping[str, Any]) -> KeyInfo:
        arn = meta["Arn"]
        aliases = [a["AliasName"] for a in self._pages("list_aliases", arn, "describe", "Aliases", KeyId=meta["KeyId"])]
        tags: dict[str, str] = {}
        if meta.get("KeyManager") != "AWS":
            try:
                for t in self._pages("list_resource_tags", arn, "describe", "Tags", KeyId=meta["KeyId"]):
                    tags[t["TagKey"]] = t["TagValue"]
            except AccessDeniedError:
                pass  # tags are optional decoration of a description
        created = meta.get("CreationDate")
        deletion = meta.get("DeletionDate")
        extra: dict[str, Any] = {
            "kind": str(meta.get("KeyManager", "")).lower(),  # customer or aws (managed)
            "account": meta.get("AWSAccountId", ""),
            "key_manager": meta.get("KeyManager", ""),
            "key_spec": meta.get("KeySpec", ""),
            "usage": meta.get("KeyUsage", ""),
            "origin": meta.get("Origin", ""),
            "multi_region": bool(meta.get("MultiRegion", False)),
        }
        if deletion is not None:
            extra["deletion_date"] = _iso(deletion)
        material = meta.get("CurrentKeyMaterialId") or ""
        return KeyInfo(
            uri=f"{self.scheme}://{arn}", key_id=arn, provider=self.scheme, state=meta.get("KeyState", ""),
            current_version=material, versions=[material] if material else [], aliases=sorted(aliases),
            description=meta.get("Description", ""),
            created=_iso(created),
            tags=tags, extra=extra,
        )

    def _pages(self, method: str, key: str, operation: str, field: str, **params: Any) -> list[Any]:
        out: list[Any] = []
        marker: str | None = None
        while True:
            resp = self._call(method, key, operation, **params, **({"Marker": marker} if marker else {}))
            out.extend(resp.get(field, []))
            if not resp.get("Truncated"):
                return out
            marker = resp.get("NextMarker")

    def list_keys(self) -> list[KeyInfo]:
        keys = self._pages("list_keys", "", "list_keys", "Keys")
        infos = []
        for k in keys:
            meta = self._call("describe_key", k["KeyArn"], "describe", KeyId=k["KeyArn"])["KeyMetadata"]
            if meta.get("KeyManager") == "CUSTOMER" and meta.get("KeyUsage") == "ENCRYPT_DECRYPT":
                infos.append(self._info(meta))
        return infos

    def create_key(self, *, alias: str | None = None, description: str = "",
                   tags: Mapping[str, str] | None = None) -> KeyInfo:
        params: dict[str, Any] = {"KeyUsage": "ENCRYPT_DECRYPT", "KeySpec": "SYMMETRIC_DEFAULT",
                                  "Description": description}
        if tags:
            params["Tags"] = [{"TagKey": k, "TagValue": v} for k, v in tags.items()]
        meta = self._call("create_key", "", "create_key", **params)["KeyMetadata"]
        if alias:
            self.set_alias(alias, KeyRef(self.scheme, meta["Arn"]))
        return self._info(meta)

    def _arn(self, ref: KeyRef, operation: str) -> str:
        if parse_key_arn(ref.name):
            return ref.name
        return self._call("describe_key", ref.name, operation, KeyId=ref.name)["KeyMetadata"]["Arn"]

    def enable_key(self, ref: KeyRef) -> None:
        arn = self._arn(ref, "enable")
        self._call("enable_key", arn, "enable", KeyId=_key_id(arn))

    def disable_key(self, ref: KeyRef) -> None:
        arn = self._arn(ref, "disable")
        self._call("disable_key", arn, "disable", KeyId=_key_id(arn))

    def rotate_key(self, ref: KeyRef) -> KeyInfo:
        """On-demand rotation: KMS makes new key material; old blobs still decrypt."""
        arn = self._arn(ref, "rotate")
        self._call("rotate_key_on_demand", arn, "rotate", KeyId=_key_id(arn))
        return self.describe(KeyRef(self.scheme, arn))

    def set_rotation(self, ref: KeyRef, enabled: bool, period_days: int | None = None) -> dict[str, Any]:
        """Turn automatic yearly (or ``period_days``) rotation on or off."""
        arn = self._arn(ref, "rotation")
        if enabled:
            extra = {"RotationPeriodInDays": int(period_days)} if period_days else {}
            self._call("enable_key_rotation", arn, "rotation", KeyId=_key_id(arn), **extra)
        else:
            self._call("disable_key_rotation", arn, "rotation", KeyId=_key_id(arn))
        return self.rotation_status(KeyRef(self.scheme, arn))

    def rotation_status(self, ref: KeyRef) -> dict[str, Any]:
        arn = self._arn(ref, "rotation_status")
        resp = self._call("get_key_rotation_status", arn, "rotation_status", KeyId=_key_id(arn))
        out: dict[str, Any] = {"key_id": arn, "automatic": bool(resp.get("KeyRotationEnabled", False))}
        if resp.get("RotationPeriodInDays") is not None:
            out["period_days"] = int(resp["RotationPeriodInDays"])
        for src, dst in (("NextRotationDate", "next_rotation"), ("OnDemandRotationStartDate", "on_demand_started")):
            value = resp.get(src)
            if value is not None:
                out[dst] = _iso(value)
        return out

    def schedule_deletion(self, ref: KeyRef, days: int = 30) -> KeyInfo:
        if not 7 <= int(days) <= 30:
            raise ConfigurationError("AWS KMS deletion windows are 7 to 30 days")
        arn = self._arn(ref, "schedule_deletion")
        self._call("schedule_key_deletion", arn, "schedule_deletion", KeyId=_key_id(arn), PendingWindowInDays=int(days))
        return self.describe(KeyRef(self.scheme, arn))

    def cancel_deletion(self, ref: KeyRef) -> KeyInfo:
        """Cancel a scheduled deletion; KMS leaves the key Disabled."""
        arn = self._arn(ref, "cancel_deletion")
        self._call("cancel_key_deletion", arn, "cancel_deletion", KeyId=_key_id(arn))
        return self.describe(KeyRef(self.scheme, arn))

    def set_alias(self, alias: str, ref: KeyRef) -> None:
        """Create ``alias`` for the key, or re-point it if it exists."""
        name = _normalise_alias(alias)
        arn = self._arn(ref, "set_alias")
        try:
            self._call("create_alias", arn, "set_alias", AliasName=name, TargetKeyId=arn)
        except KeyServiceError as exc:
            cause = exc.__cause__
            code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
            if code != "AlreadyExistsException":
                raise
            self._call("update_alias", arn, "set_alias", AliasName=name, TargetKeyId=arn)
        self._forget(name)

    def delete_alias(self, alias: str) -> None:
        name = _normalise_alias(alias)
        self._call("delete_alias", name, "delete_alias", AliasName=name)
        self._forget(name)

    def tag_key(self, ref: KeyRef, tags: Mapping[str, str]) -> None:
        arn = self._arn(ref, "tag")
        self._call("tag_resource", arn, "tag", KeyId=_key_id(arn),
                   Tags=[{"TagKey": k, "TagValue": v} for k, v in tags.items()])

    def untag_key(self, ref: KeyRef, keys: list[str]) -> None:
        arn = self._arn(ref, "untag")
        self._call("untag_resource", arn, "untag", KeyId=_key_id(arn), TagKeys=list(keys))


__all__ = ["AwsKmsProvider", "parse_key_arn"]

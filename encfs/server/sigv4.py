"""SigV4 request authentication.

botocore's own signer recomputes the signature the client should have sent
from what arrived (method, path, query, the headers the client says it
signed, the body's SHA-256) and the principal's secret; the two are compared
with :func:`hmac.compare_digest`.  Checked before anything else: the
credential scope (date of ``X-Amz-Date``, our region, service ``kms``,
``aws4_request``), the time (within ``skew`` seconds, default five minutes),
that ``host`` and ``x-amz-date`` are signed, and that a client-supplied
``X-Amz-Content-SHA256`` matches the body (botocore would otherwise sign
with the header's value, not the body's hash).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.auth import SigV4Auth
from botocore.credentials import Credentials

from .protocol import KMSError

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-f]{64})\s*$")


@dataclass(frozen=True)
class SignedRequest:
    """What the Authorization header claims (not yet verified)."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str


def _incomplete(message: str) -> KMSError:
    return KMSError("IncompleteSignatureException", message)


def _invalid(message: str) -> KMSError:
    return KMSError("InvalidSignatureException", message)


class _Headers(dict):
    """The signed headers, in the shape botocore's signer reads them."""

    def get_all(self, name: str) -> list[str]:
        return self[name]


class _Request:
    """The received request, in the shape botocore's signer reads it (an
    AWSRequest would re-parse every header through email.message)."""

    def __init__(self, method: str, url: str, headers: Any, body: bytes, amz_date: str) -> None:
        self.method = method
        self.url = url
        self.headers = headers  # case-insensitive (aiohttp's CIMultiDictProxy)
        self.body = body
        self.params: dict[str, str] = {}
        self.context = {"timestamp": amz_date}


class _Recompute(SigV4Auth):
    """botocore's signer, restricted to the headers the client signed and
    the hash of the body that actually arrived."""

    def __init__(self, credentials: Credentials, region: str, signed: tuple[str, ...], body_hash: str) -> None:
        super().__init__(credentials, "kms", region)
        self._signed = signed
        self._body_hash = body_hash

    def headers_to_sign(self, request: Any) -> Any:
        out = _Headers()
        for name in self._signed:
            out[name] = list(request.headers.getall(name, ()))
        return out

    def payload(self, request: Any) -> str:
        return self._body_hash


class Verifier:
    def __init__(self, region: str, *, skew: float = 300.0, clock: Callable[[], float] = time.time,
                 hostnames: tuple[str, ...] = ()) -> None:
        self.region = region
        self.skew = skew
        self.clock = clock
        #: lower-cased; a bare name matches it on any port, "name:port" that port only
        self.hostnames = frozenset(h.lower() for h in hostnames)

    def check_host(self, hosts: list[str]) -> None:
        """With ``hostnames`` configured: every (signed) Host header must name
        this server, so a request signed for another server that trusts the
        same access key cannot be replayed here."""
        if not self.hostnames:
            return
        if not hosts:
            raise _invalid("the host header must be signed")
        for value in hosts:
            host = value.strip().lower()
            bare = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") and "]:" in host \
                else host
            if host not in self.hostnames and bare not in self.hostnames:
                raise _invalid("the signed host header names another server than this one")

    def parse(self, headers: Mapping[str, str]) -> SignedRequest:
        auth = headers.get("Authorization")
        if not auth:
            raise KMSError("MissingAuthenticationTokenException", "Missing Authentication Token")
        m = _AUTH.match(auth.strip())
        if not m:
            raise _incomplete("Authorization header requires Credential, SignedHeaders and Signature "
                              "with algorithm AWS4-HMAC-SHA256")
        parts = m.group(1).split("/")
        if len(parts) != 5:
            raise _incomplete("Credential must be <access key>/<date>/<region>/<service>/aws4_request")
        akid, date, region, service, term = parts
        signed = tuple(m.group(2).lower().split(";"))
        amz_date = headers.get("X-Amz-Date", "")
        if term != "aws4_request":
            raise _invalid("Credential should be scoped with a valid terminator: 'aws4_request'")
        return SignedRequest(akid, date, region, service, signed, m.group(3), amz_date)

    def check_claims(self, req: SignedRequest) -> None:
        """Everything but the signature itself (run before looking up the secret)."""
        if "host" not in req.signed_headers or "x-amz-date" not in req.signed_headers:
            raise _invalid("the host and x-amz-date headers must be signed")
        if not re.fullmatch(r"\d{8}T\d{6}Z", req.amz_date):
            raise _incomplete("X-Amz-Date must be a basic ISO 8601 time such as 20261201T120000Z")
        if req.date != req.amz_date[:8]:
            raise _invalid(f"Credential should be scoped to a valid date: '{req.amz_date[:8]}'")
        if req.region != self.region:
            raise _invalid(f"Credential should be scoped to a valid region: '{self.region}'")
        if req.service != "kms":
            raise _invalid("Credential should be scoped to correct service: 'kms'")
        d = req.amz_date
        try:  # (strptime costs more than the rest of these checks together)
            when = calendar.timegm((int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[9:11]), int(d[11:13]),
                                    int(d[13:15]), 0, 0, 0))
            datetime(int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[9:11]), int(d[11:13]), int(d[13:15]))
        except ValueError:
            raise _incomplete("X-Amz-Date is not a valid time") from None
        now = self.clock()
        if when < now - self.skew:
            raise _invalid(f"Signature expired: {req.amz_date} is now earlier than the allowed window "
                           f"({int(self.skew)} s)")
        if when > now + self.skew:
            raise _invalid(f"Signature not yet current: {req.amz_date} is later than the allowed window "
                           f"({int(self.skew)} s)")

    def verify(self, req: SignedRequest, secret: str, *, method: str, host: str, path_qs: str,
               headers: Any, body: bytes) -> None:
        body_hash = hashlib.sha256(body).hexdigest()
        claimed = headers.get("X-Amz-Content-SHA256")
        if claimed is not None and not hmac.compare_digest(claimed.encode(), body_hash.encode()):
            raise _invalid("The request body does not match its X-Amz-Content-SHA256")
        aws = _Request(method, f"http://{host}{path_qs}", headers, body, req.amz_date)
        signer = _Recompute(Credentials(req.access_key_id, secret), self.region, req.signed_headers, body_hash)
        canonical = signer.canonical_request(aws)
        expected = signer.signature(signer.string_to_sign(aws, canonical), aws)
        if not hmac.compare_digest(expected.encode(), req.signature.encode()):
            raise _invalid("The request signature we calculated does not match the signature you provided. "
                           "Check your AWS Secret Access Key and signing method.")

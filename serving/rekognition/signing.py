"""SigV4 as the server checks it: the signature is computed again with botocore's own signer over the headers the
client signed and the raw body, with the secret behind its access key id, and compared in constant time."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as AwsCredentials

from cluster.errors import FacegridError
from cluster.keys.credentials import Resolved

SERVICE = "rekognition"
# AWS's own window for a signed request's time; past it the request is refused, within it a replay is (below).
MAX_SKEW = timedelta(minutes=5)
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<headers>[a-z0-9;\-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


class SignatureProblem(FacegridError):
    """Why a request's signature is not accepted: `aws_name` is the AWS error a client expects."""

    code = "INVALID_SIGNATURE"
    status = 403

    def __init__(self, aws_name: str, message: str) -> None:
        super().__init__(message)
        self.aws_name = aws_name


def verify(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    resolve: Callable[[str, str | None], Resolved],
    now: datetime | None = None,
) -> Resolved:
    """Who signed the request, or SignatureProblem. `resolve(access_key_id, session_token)` returns the secret
    and identity behind the key (raising for unknown, revoked or expired ones)."""
    match = _AUTH.match(headers.get("authorization", ""))
    if match is None:
        raise SignatureProblem("MissingAuthenticationTokenException", "the request must be signed with SigV4")
    if match["service"] != SERVICE:
        raise SignatureProblem("InvalidSignatureException", f"the credential scope names service {match['service']}")
    stamp = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureProblem("IncompleteSignatureException", "X-Amz-Date is missing or malformed") from None
    if abs((now or datetime.now(UTC)) - signed_at) > MAX_SKEW or stamp[:8] != match["date"]:
        raise SignatureProblem(
            "InvalidSignatureException", "Signature expired: the request time is more than 5 minutes from the server's"
        )
    signed = match["headers"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        raise SignatureProblem("IncompleteSignatureException", "the signed headers must include host and be present")
    resolved = resolve(match["key"], headers.get("x-amz-security-token"))
    request = AWSRequest(method=method, url=url, data=body, headers={name: headers[name] for name in signed})
    request.context["timestamp"] = stamp
    signer = SigV4Auth(AwsCredentials(match["key"], resolved.secret), SERVICE, match["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise SignatureProblem(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
            "Access Key and signing method.",
        )
    return resolved


class ReplayGuard:
    """The signatures of requests answered within the signing window: the same signed request sent again (a
    replay, by whoever captured it) is refused, so that no act or search is done or audited twice in a caller's
    name. SigV4 has no nonce: a client asking the same thing twice in one second signs it the same, so reads
    (List*, Describe*, Get*) are left alone, and a request that failed may be sent again as it was (a retry).
    Kept per process: each API replica guards its own."""

    def __init__(self) -> None:
        self.answered: dict[str, float] = {}

    @staticmethod
    def _signature(headers: Mapping[str, str]) -> str:
        return headers.get("authorization", "").rpartition("Signature=")[2]

    @staticmethod
    def guarded(operation: str) -> bool:
        return not operation.startswith(("List", "Describe", "Get"))

    def check(self, headers: Mapping[str, str]) -> None:
        at = self.answered.get(self._signature(headers))
        if at is not None and time.monotonic() - at <= MAX_SKEW.total_seconds():
            raise SignatureProblem("InvalidSignatureException", "this signed request was answered already (a replay)")

    def answered_now(self, headers: Mapping[str, str]) -> None:
        now = time.monotonic()
        if len(self.answered) > MAX_REMEMBERED:
            horizon = now - MAX_SKEW.total_seconds()
            self.answered = {s: t for s, t in self.answered.items() if t >= horizon}
        self.answered[self._signature(headers)] = now


# Signatures remembered before the expired ones are swept out (at 1,000 requests a second, 5 minutes' worth).
MAX_REMEMBERED = 300_000

"""Signed HTTP requests (contract section 7): the canonical request, signing and its checks.

Every request but `GET /v1/health` and `GET /metrics` carries four headers:

    X-Orfeas-Agent:     <agent_id>
    X-Orfeas-Timestamp: <UTC, RFC 3339, e.g. 2026-11-24T10:00:00Z>
    X-Orfeas-Nonce:     <16-64 characters of [A-Za-z0-9_-]>
    X-Orfeas-Signature: sha256=<hex HMAC-SHA256(secret, canonical request)>

canonical request = METHOD "\\n" PATH_AND_QUERY "\\n" TIMESTAMP "\\n" NONCE "\\n" hex(sha256(body)),
the key being the agent's secret as text, as for manifests (`signing.py`). An empty body
hashes as sha256 of zero bytes (e3b0c442...). The time window is the manifests' window; a
nonce is spent in the intake ledger's nonce table, so a nonce used by a request can never
be used again by a request or a manifest of the same agent, and the other way round.

The header checks run before the body is read, so an unknown agent, a stale request or a
request from outside the agent's networks costs nothing; the signature is checked once the
body's hash is known.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.ledger import IntakeLedger, open_ledger
from orfeas_pipelines.lib.intake.manifest import format_timestamp, is_valid_id, parse_timestamp
from orfeas_pipelines.lib.intake.registry import AgentPolicy, AgentRegistry
from orfeas_pipelines.lib.intake.signing import SIGNATURE_PREFIX

AGENT_HEADER = "x-orfeas-agent"
TIMESTAMP_HEADER = "x-orfeas-timestamp"
NONCE_HEADER = "x-orfeas-nonce"
SIGNATURE_HEADER = "x-orfeas-signature"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SIGNATURE_RE = re.compile(r"^sha256=[0-9a-f]{64}$")


class RequestError(Exception):
    """A refused request: a stable `code` (reason.json's codes plus the HTTP-only ones) and one line.

    `retry_after` is the seconds a rate-limited agent should wait.
    """

    def __init__(self, code: str, message: str, retry_after: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class SignedRequest:
    """The authentication headers of one request, checked except for the signature."""

    policy: AgentPolicy
    timestamp: str
    nonce: str
    signature: str


def canonical_request(method: str, target: str, timestamp: str, nonce: str, body_sha256: str) -> bytes:
    return "\n".join((method.upper(), target, timestamp, nonce, body_sha256)).encode("utf-8")


def request_signature(secret: str, method: str, target: str, timestamp: str, nonce: str, body_sha256: str) -> str:
    text = canonical_request(method, target, timestamp, nonce, body_sha256)
    return SIGNATURE_PREFIX + hmac.new(secret.encode("utf-8"), text, hashlib.sha256).hexdigest()


def signed_headers(
    agent_id: str,
    secret: str,
    method: str,
    target: str,
    body_sha256: str = EMPTY_BODY_SHA256,
    now: datetime | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers an agent sends with a request (the client side of `check_headers`)."""
    timestamp = format_timestamp(now or datetime.now(timezone.utc))
    nonce = nonce or secrets.token_urlsafe(18)
    return {
        "X-Orfeas-Agent": agent_id,
        "X-Orfeas-Timestamp": timestamp,
        "X-Orfeas-Nonce": nonce,
        "X-Orfeas-Signature": request_signature(secret, method, target, timestamp, nonce, body_sha256),
    }


def check_headers(
    headers: Mapping[str, str], registry: AgentRegistry, client_address: str, now_epoch: float, window_seconds: float
) -> SignedRequest:
    """Who is asking, from where and when; RequestError for a missing header, an unknown
    agent (unknown_agent), a foreign network (network_not_allowed), a time outside the window
    (stale, future) or a malformed nonce or signature (bad_signature)."""
    values = {name: headers.get(name) for name in (AGENT_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise RequestError("bad_signature", f"request is not signed: header {_title(missing[0])} is missing")
    agent_id = values[AGENT_HEADER]
    policy = registry.get(agent_id) if is_valid_id(agent_id) else None
    if policy is None:
        raise RequestError("unknown_agent", f"agent {_short(agent_id)} is not in the key registry")
    if not policy.allows_address(client_address):
        raise RequestError("network_not_allowed", f"agent {agent_id} may not send requests from {client_address}")
    timestamp = values[TIMESTAMP_HEADER]
    try:
        age = now_epoch - parse_timestamp(timestamp).timestamp()
    except ValueError:
        raise RequestError("bad_signature", f"{_title(TIMESTAMP_HEADER)} must be RFC 3339 UTC like 2026-11-24T10:00:00Z")
    if age > window_seconds:
        raise RequestError("stale", f"request timestamp {timestamp} is {int(age)} s old, over the window of {int(window_seconds)} s")
    if -age > window_seconds:
        raise RequestError("future", f"request timestamp {timestamp} is {int(-age)} s ahead, over the window of {int(window_seconds)} s")
    nonce = values[NONCE_HEADER]
    if not _NONCE_RE.fullmatch(nonce):
        raise RequestError("bad_signature", f"{_title(NONCE_HEADER)} must be 16-64 characters of A-Z a-z 0-9 _ -")
    signature = values[SIGNATURE_HEADER]
    if not _SIGNATURE_RE.fullmatch(signature):
        raise RequestError("bad_signature", f"{_title(SIGNATURE_HEADER)} must be sha256=<64 lowercase hex digits>")
    return SignedRequest(policy, timestamp, nonce, signature)


def check_signature(request: SignedRequest, method: str, target: str, body_sha256: str) -> None:
    """Constant-time comparison of the request's signature with the one the agent's key gives."""
    expected = request_signature(request.policy.secret, method, target, request.timestamp, request.nonce, body_sha256)
    if not hmac.compare_digest(expected.encode("ascii"), request.signature.encode("ascii")):
        raise RequestError("bad_signature", f"request signature does not match agent {request.policy.agent_id}'s key")


class NonceBook:
    """Spends request nonces in the intake ledger without making requests wait on its write lock.

    An intake tick holds the ledger's write lock for its whole tick (up to a second), so a
    request does not write the ledger itself: `spend` checks the ledger (a read, never
    blocked in WAL mode) and the nonces not yet written, under one lock, and a background
    thread writes the new ones in batches every `flush_seconds`. A nonce leaves the pending
    set only once its row is committed, so no moment exists where a replay gets through.
    """

    def __init__(self, home: OrfeasHome, flush_seconds: float = 0.1):
        self._home = home
        self._flush_seconds = flush_seconds
        self._pending: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="orfeas-nonce-writer", daemon=True)
        self._writer.start()

    def spend(self, agent_id: str, nonce: str, at: float) -> None:
        """RequestError(replay) if the agent used this nonce before, in either channel."""
        key = (agent_id, nonce)
        with self._lock:
            if key in self._pending or self._reader().nonce_seen(agent_id, nonce):
                raise RequestError("replay", f"nonce was already used by agent {agent_id}")
            self._pending[key] = at

    def close(self) -> None:
        """Write what is pending and stop the writer."""
        self._stopped.set()
        self._wake.set()
        self._writer.join()

    def _reader(self) -> IntakeLedger:
        ledger = getattr(self._local, "ledger", None)
        if ledger is None:
            ledger = self._local.ledger = open_ledger(self._home)
        return ledger

    def _write_loop(self) -> None:
        with open_ledger(self._home) as ledger:
            while True:
                stopping = self._stopped.is_set()
                with self._lock:
                    batch = [(agent, nonce, at) for (agent, nonce), at in self._pending.items()]
                if batch:
                    with ledger.transaction():
                        ledger.spend_nonces(batch)
                    with self._lock:
                        for agent, nonce, _ in batch:
                            self._pending.pop((agent, nonce), None)
                if stopping:
                    return
                self._wake.wait(self._flush_seconds)


def _title(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

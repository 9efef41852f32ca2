"""Request signing (contract section 7): the canonical request, the header checks and the shared nonce ledger."""

import hashlib
import hmac
import time
from datetime import datetime, timedelta, timezone

import pytest

from orfeas_pipelines.lib.intake.ledger import IntakeLedger
from orfeas_pipelines.lib.intake.registry import AgentRegistry, create_agent
from orfeas_pipelines.lib.intake.requests import (
    EMPTY_BODY_SHA256,
    NonceBook,
    RequestError,
    canonical_request,
    check_headers,
    check_signature,
    signed_headers,
)


@pytest.fixture
def registry(home):
    create_agent(home.agents_file, "bot")
    create_agent(home.agents_file, "fenced", allow_from=("10.1.0.0/16", "::1"))
    return AgentRegistry.load(home.agents_file)


def lowercase(headers: dict) -> dict:
    return {key.lower(): value for key, value in headers.items()}


def test_the_signature_is_an_hmac_over_the_documented_lines(registry):
    secret = registry.get("bot").secret
    moment = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
    headers = signed_headers("bot", secret, "get", "/v1/jobs?limit=5", now=moment, nonce="n" * 16)
    text = b"GET\n/v1/jobs?limit=5\n2026-11-24T10:00:00Z\n" + b"n" * 16 + b"\n" + EMPTY_BODY_SHA256.encode()
    assert canonical_request("get", "/v1/jobs?limit=5", "2026-11-24T10:00:00Z", "n" * 16, EMPTY_BODY_SHA256) == text
    assert headers["X-Orfeas-Signature"] == "sha256=" + hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()
    assert EMPTY_BODY_SHA256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_a_good_request_passes_and_a_changed_one_does_not(registry):
    secret = registry.get("bot").secret
    body = hashlib.sha256(b"payload").hexdigest()
    headers = lowercase(signed_headers("bot", secret, "POST", "/v1/jobs", body))
    signed = check_headers(headers, registry, "127.0.0.1", time.time(), 600)
    check_signature(signed, "POST", "/v1/jobs", body)
    for method, target, digest in [("PUT", "/v1/jobs", body), ("POST", "/v1/jobs?x", body), ("POST", "/v1/jobs", EMPTY_BODY_SHA256)]:
        with pytest.raises(RequestError) as refused:
            check_signature(signed, method, target, digest)
        assert refused.value.code == "bad_signature"


@pytest.mark.parametrize(
    "change, code",
    [
        ({"x-orfeas-agent": "nobody"}, "unknown_agent"),
        ({"x-orfeas-agent": "../etc"}, "unknown_agent"),
        ({"x-orfeas-nonce": "short"}, "bad_signature"),
        ({"x-orfeas-nonce": "has space in it 0123"}, "bad_signature"),
        ({"x-orfeas-signature": "md5=abc"}, "bad_signature"),
        ({"x-orfeas-timestamp": "yesterday"}, "bad_signature"),
        ({"x-orfeas-signature": ""}, "bad_signature"),
    ],
)
def test_bad_headers_are_refused_with_their_code(registry, change, code):
    headers = {**lowercase(signed_headers("bot", registry.get("bot").secret, "GET", "/v1/jobs")), **change}
    with pytest.raises(RequestError) as refused:
        check_headers(headers, registry, "127.0.0.1", time.time(), 600)
    assert refused.value.code == code
    assert registry.get("bot").secret not in str(refused.value)


@pytest.mark.parametrize("shift, code", [(-601, "stale"), (601, "future")])
def test_the_time_window_is_the_manifests(registry, shift, code):
    moment = datetime.now(timezone.utc) + timedelta(seconds=shift)
    headers = lowercase(signed_headers("bot", registry.get("bot").secret, "GET", "/v1/jobs", now=moment))
    with pytest.raises(RequestError) as refused:
        check_headers(headers, registry, "127.0.0.1", time.time(), 600)
    assert refused.value.code == code


@pytest.mark.parametrize("address, allowed", [("10.1.2.3", True), ("::1", True), ("10.2.0.1", False), ("127.0.0.1", False)])
def test_the_network_allow_list(registry, address, allowed):
    headers = lowercase(signed_headers("fenced", registry.get("fenced").secret, "GET", "/v1/jobs"))
    if allowed:
        assert check_headers(headers, registry, address, time.time(), 600).policy.agent_id == "fenced"
    else:
        with pytest.raises(RequestError) as refused:
            check_headers(headers, registry, address, time.time(), 600)
        assert refused.value.code == "network_not_allowed"


def test_a_nonce_is_spent_once_in_the_ledger_shared_with_manifests(home):
    path = home.state / "intake.sqlite"
    book = NonceBook(home, flush_seconds=0.01)
    try:
        book.spend("bot", "first-nonce-0000", time.time())
        with pytest.raises(RequestError) as refused:
            book.spend("bot", "first-nonce-0000", time.time())
        assert refused.value.code == "replay"
        book.spend("other", "first-nonce-0000", time.time())
        with IntakeLedger(path) as ledger:
            ledger.spend_nonces([("bot", "manifest-nonce-00", time.time())])
        with pytest.raises(RequestError):
            book.spend("bot", "manifest-nonce-00", time.time())
    finally:
        book.close()
    with IntakeLedger(path) as ledger:
        assert ledger.nonce_seen("bot", "first-nonce-0000") and ledger.nonce_seen("other", "first-nonce-0000")
    restarted = NonceBook(home)
    try:
        with pytest.raises(RequestError):
            restarted.spend("bot", "first-nonce-0000", time.time())
    finally:
        restarted.close()

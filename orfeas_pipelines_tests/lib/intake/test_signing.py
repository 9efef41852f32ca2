import hashlib
import hmac
import json
import string
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from orfeas_pipelines.lib.export import MESH_FORMATS
from orfeas_pipelines.lib.intake.manifest import parse_manifest
from orfeas_pipelines.lib.intake.signing import canonical_json, new_secret, sign, signature_matches
from orfeas_pipelines.lib.intake.submit import build_manifest

SECRET = "ab" * 32
NOW = datetime(2026, 11, 23, 17, 0, tzinfo=timezone.utc)


def test_canonical_json_is_sorted_compact_utf8_and_leaves_out_the_signature():
    manifest = {"b": 1, "a": {"y": [1, 2], "x": "é"}, "signature": "sha256=00"}
    assert canonical_json(manifest) == '{"a":{"x":"é","y":[1,2]},"b":1}'.encode("utf-8")


def test_signature_is_hmac_sha256_keyed_by_the_secret_text():
    manifest = {"version": 1, "job_id": "j1"}
    expected = hmac.new(SECRET.encode(), b'{"job_id":"j1","version":1}', hashlib.sha256).hexdigest()
    assert sign(manifest, SECRET) == "sha256=" + expected


def test_signature_matches_only_with_the_right_secret_and_content():
    manifest = build_manifest("job-1", "agent-a", [("a.png", "0" * 64)], SECRET, ["stl"], 128, 0, NOW)
    assert signature_matches(manifest, manifest["signature"], SECRET)
    assert not signature_matches(manifest, manifest["signature"], "cd" * 32)
    assert not signature_matches({**manifest, "nonce": "other"}, manifest["signature"], SECRET)
    assert not signature_matches(manifest, "sha256=" + "0" * 64, SECRET)


def test_new_secrets_are_64_hex_characters_and_distinct():
    secrets_made = {new_secret() for _ in range(20)}
    assert len(secrets_made) == 20
    assert all(len(secret) == 64 and set(secret) <= set(string.hexdigits.lower()) for secret in secrets_made)


ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
manifests = st.fixed_dictionaries(
    {
        "job_id": ids,
        "agent_id": ids,
        "files": st.lists(ids, min_size=1, max_size=4, unique=True),
        "formats": st.lists(st.sampled_from(MESH_FORMATS), min_size=1, max_size=4, unique=True),
        "resolution": st.integers(16, 1024),
        "seed": st.integers(0, 2**63 - 1),
        "nonce": st.from_regex(r"[\x21-\x7e]{1,40}", fullmatch=True),
    }
)


def _build(fields: dict) -> dict:
    images = [(file, hashlib.sha256(file.encode()).hexdigest()) for file in fields["files"]]
    return build_manifest(
        fields["job_id"], fields["agent_id"], images, SECRET,
        fields["formats"], fields["resolution"], fields["seed"], NOW, fields["nonce"],
    )


@settings(max_examples=60, deadline=None)
@given(manifests)
def test_sign_then_parse_then_verify_round_trips(fields):
    manifest = _build(fields)
    parsed = parse_manifest(json.dumps(manifest, indent=3).encode())
    assert signature_matches(parsed.signed_fields(), parsed.signature, SECRET)


def _other_hex(digest: str) -> str:
    return "f" * 64 if digest != "f" * 64 else "e" * 64


@settings(max_examples=60, deadline=None)
@given(manifests, st.sampled_from(["job_id", "agent_id", "created_at", "nonce", "images", "output", "params"]))
def test_any_single_field_change_breaks_the_signature(fields, field):
    manifest = _build(fields)
    changed = {
        "job_id": lambda value: value + "x",
        "agent_id": lambda value: value + "x",
        "created_at": lambda value: "2026-11-23T17:00:01Z",
        "nonce": lambda value: value[:-1] + ("a" if value[-1] != "a" else "b"),
        "images": lambda value: [{**value[0], "sha256": _other_hex(value[0]["sha256"])}] + value[1:],
        "output": lambda value: {"formats": [fmt for fmt in MESH_FORMATS if fmt not in value["formats"]] or ["stl"]},
        "params": lambda value: {**value, "seed": value["seed"] + 1 if value["seed"] < 2**63 - 1 else 0},
    }[field](manifest[field])
    tampered = {**manifest, field: changed}
    assert tampered[field] != manifest[field]
    parsed = parse_manifest(json.dumps(tampered).encode())
    assert not signature_matches(parsed.signed_fields(), parsed.signature, SECRET)

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orfeas_pipelines.lib.intake.manifest import MAX_MANIFEST_BYTES, REJECTION_CODES, IntakeError, parse_manifest
from orfeas_pipelines.lib.intake.submit import build_manifest

NOW = datetime(2026, 11, 23, 17, 0, tzinfo=timezone.utc)
SECRET = "ab" * 32


def valid() -> dict:
    return build_manifest("job-1", "agent-a", [("chair.png", "a" * 64)], SECRET, ["stl", "glb"], 256, 7, NOW)


def raw(manifest: dict) -> bytes:
    return json.dumps(manifest).encode()


def code_of(data: bytes) -> str:
    with pytest.raises(IntakeError) as caught:
        parse_manifest(data)
    assert "\n" not in caught.value.message and caught.value.message
    return caught.value.code


def test_a_valid_manifest_parses_with_its_values():
    manifest = parse_manifest(raw(valid()))
    assert manifest.job_id == "job-1" and manifest.agent_id == "agent-a"
    assert manifest.files == ["chair.png"]
    assert manifest.output.formats == ["stl", "glb"]
    assert (manifest.params.resolution, manifest.params.seed) == (256, 7)
    assert manifest.created == NOW


def test_params_default_and_signed_fields_keep_only_what_the_agent_wrote():
    data = valid()
    del data["params"]
    manifest = parse_manifest(raw(data))
    assert (manifest.params.resolution, manifest.params.seed) == (128, 0)
    expected = {key: value for key, value in data.items() if key != "signature"}
    assert manifest.signed_fields() == expected


def test_size_limit_is_checked_before_decoding():
    assert code_of(b" " * (MAX_MANIFEST_BYTES + 1)) == "too_large"


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"\xff\xfe", b'{"version": 1, "version": 1}', b"[" * 100_000 + b"]" * 100_000, b"NaN1"],
)
def test_broken_json_is_bad_json(data):
    assert code_of(data) == "bad_json"


@pytest.mark.parametrize("version", [2, 0, "1", True, 1.0, None])
def test_other_versions_are_unknown_version(version):
    assert code_of(raw({**valid(), "version": version})) == "unknown_version"


@pytest.mark.parametrize(
    "change",
    [
        {"job_id": "../etc"},
        {"job_id": ""},
        {"job_id": "x" * 129},
        {"agent_id": "agent a"},
        {"created_at": "2026-11-23T17:00:00+00:00"},
        {"created_at": "2026-13-23T17:00:00Z"},
        {"nonce": ""},
        {"nonce": "n" * 129},
        {"nonce": "with space"},
        {"images": []},
        {"images": [{"file": "a.png", "sha256": "xyz"}]},
        {"images": [{"file": "a.png", "sha256": "a" * 64}, {"file": "a.png", "sha256": "b" * 64}]},
        {"images": [{"file": "a.png", "sha256": "a" * 64, "mode": "x"}]},
        {"output": {"formats": []}},
        {"output": {"formats": ["fbx"]}},
        {"output": {"formats": ["stl", "stl"]}},
        {"params": {"resolution": "128", "seed": 0}},
        {"params": {"resolution": 128.0, "seed": 0}},
        {"params": {"resolution": 8, "seed": 0}},
        {"params": {"resolution": 128, "seed": True}},
        {"params": {"resolution": 128, "seed": -1}},
        {"signature": "md5=abc"},
        {"extra": 1},
    ],
)
def test_schema_violations_are_bad_manifest(change):
    assert code_of(raw({**valid(), **change})) == "bad_manifest"


@pytest.mark.parametrize("field", ["job_id", "agent_id", "created_at", "nonce", "images", "output", "signature"])
def test_each_required_field_is_required(field):
    data = valid()
    del data[field]
    assert code_of(raw(data)) == "bad_manifest"


def test_non_object_json_is_bad_manifest():
    assert code_of(b"[1, 2]") == "bad_manifest"


def test_images_whose_meshes_would_share_a_name_are_bad_manifest():
    clash = build_manifest("job-1", "agent-a", [("chair.png", "a" * 64), ("chair.jpg", "b" * 64)], SECRET, ["stl"], 128, 0, NOW)
    with pytest.raises(IntakeError) as caught:
        parse_manifest(raw(clash))
    assert caught.value.code == "bad_manifest" and "overwrite" in caught.value.message


def test_errors_name_the_job_and_agent_when_the_manifest_gave_them():
    with pytest.raises(IntakeError) as caught:
        parse_manifest(raw({**valid(), "extra": 1}))
    assert (caught.value.job_id, caught.value.agent_id) == ("job-1", "agent-a")
    assert "extra" in caught.value.message


def test_intake_error_refuses_unknown_codes():
    with pytest.raises(ValueError, match="unknown rejection code"):
        IntakeError("made_up", "x")
    assert {"bad_signature", "replay", "not_a_job"} <= set(REJECTION_CODES)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_ever_raise_intake_error(data):
    try:
        parse_manifest(data)
    except IntakeError as error:
        assert error.code in REJECTION_CODES


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_only_ever_raises_intake_error(value):
    try:
        parse_manifest(json.dumps(value).encode())
    except IntakeError as error:
        assert error.code in ("bad_manifest", "bad_json", "unknown_version")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(valid())), json_values)
def test_any_field_replaced_by_arbitrary_json_parses_or_raises_intake_error(field, value):
    data = {**valid(), field: value}
    try:
        manifest = parse_manifest(json.dumps(data).encode())
    except IntakeError as error:
        assert error.code in ("bad_manifest", "unknown_version")
    else:
        assert getattr(manifest, field) is not None


def test_size_mm_is_optional_and_a_number_keeps_the_text_the_agent_signed():
    assert parse_manifest(raw(valid())).params.size_mm == 100
    for size_mm in (100, 37.5, 100.0):
        data = build_manifest("job-1", "agent-a", [("chair.png", "a" * 64)], SECRET, ["stl"], 128, 0, NOW, size_mm=size_mm)
        manifest = parse_manifest(raw(data))
        assert repr(manifest.params.size_mm) == repr(size_mm)
        assert manifest.signed_fields() == {key: value for key, value in data.items() if key != "signature"}


@pytest.mark.parametrize("size_mm", [0, 0.5, -10, 10_001, "100", True, None, [100]])
def test_a_size_mm_that_is_not_a_sensible_number_of_millimetres_is_bad_manifest(size_mm):
    data = valid()
    data["params"]["size_mm"] = size_mm
    with pytest.raises(IntakeError) as caught:
        parse_manifest(raw(data))
    assert caught.value.code == "bad_manifest"
    assert caught.value.message == "job.json field params.size_mm: Value error, must be a number of millimetres from 1 to 10000"


def test_a_non_finite_size_mm_is_refused():
    data = raw(valid()).replace(b'"seed": 7', b'"seed": 7, "size_mm": Infinity')
    assert code_of(data) == "bad_manifest"

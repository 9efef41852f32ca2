"""Job manifest v1 (`inbox/<job_id>/job.json`): the schema, the parser and the intake error.

The schema is strict on purpose: a signed manifest must mean exactly what it says, so
unknown fields, wrong JSON types (``"128"`` or ``128.0`` for an int, ``true`` for 1) and
duplicate keys are refused rather than coerced. Every string the signature covers is
restricted to printable ASCII, so the canonical JSON an agent computes in any language is
byte-identical to ours.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, ValidationError, field_validator

from orfeas_pipelines.lib.export import DEFAULT_SIZE_MM, MESH_FORMATS

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_IMAGES_PER_MANIFEST = 1024
MIN_SIZE_MM, MAX_SIZE_MM = 1, 10_000
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)

REJECTION_CODES: tuple[str, ...] = (
    "bad_json",
    "bad_manifest",
    "unknown_version",
    "unknown_agent",
    "bad_signature",
    "stale",
    "future",
    "replay",
    "image_missing",
    "hash_mismatch",
    "not_an_image",
    "too_large",
    "too_many_scans",
    "decode_too_slow",
    "too_many_images",
    "path_not_allowed",
    "format_not_allowed",
    "resolution_not_allowed",
    "not_a_job",
)


class IntakeError(Exception):
    """A rejection: a stable `code` from REJECTION_CODES and a one-line `message`.

    `job_id` and `agent_id` are filled in when the manifest told us them, so the audit line
    and the outbox status can name the job. `signed` is set once the signature matched: only
    then may a rejection be announced under the job id. `authentic` is set once the time
    window and replay checks have passed too: only then is the job's nonce and id burnt.
    Messages never contain a secret.
    """

    def __init__(
        self,
        code: str,
        message: str,
        job_id: str | None = None,
        agent_id: str | None = None,
        authentic: bool = False,
        signed: bool = False,
    ):
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = " ".join(message.split())
        self.job_id = job_id
        self.agent_id = agent_id
        self.authentic = authentic
        self.signed = signed


def is_valid_id(value: object) -> bool:
    """Job ids, agent ids and image file names share one safe alphabet (they end up in paths)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
PrintableAscii = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]+$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
MeshFormat = Literal[MESH_FORMATS]  # type: ignore[valid-type]
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ImageEntry(_Strict):
    """One image of the job. `file` is checked as a path later (a bad name is path_not_allowed)."""

    file: Annotated[str, Field(min_length=1, max_length=255)]
    sha256: Sha256Hex


class OutputSpec(_Strict):
    formats: Annotated[list[MeshFormat], Field(min_length=1, max_length=len(MESH_FORMATS))]

    @field_validator("formats")
    @classmethod
    def _no_duplicates(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError("formats are listed more than once")
        return formats


def _millimetres(value: Any) -> int | float:
    """A JSON number kept as the agent wrote it (100 stays 100, 37.5 stays 37.5), because the
    signature covers its text."""
    if type(value) not in (int, float) or not math.isfinite(value) or not MIN_SIZE_MM <= value <= MAX_SIZE_MM:
        raise ValueError(f"must be a number of millimetres from {MIN_SIZE_MM} to {MAX_SIZE_MM}")
    return value


Millimetres = Annotated[int | float, PlainValidator(_millimetres, json_schema_input_type=float)]


class JobParams(_Strict):
    """Every key is optional; `size_mm` is the largest side of the STL (section 6)."""

    resolution: Annotated[int, Field(ge=16, le=1024)] = 128
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    size_mm: Millimetres = DEFAULT_SIZE_MM


class JobManifest(_Strict):
    version: Literal[1]
    job_id: Identifier
    agent_id: Identifier
    created_at: str
    nonce: Annotated[PrintableAscii, Field(max_length=128)]
    images: Annotated[list[ImageEntry], Field(min_length=1, max_length=MAX_IMAGES_PER_MANIFEST)]
    output: OutputSpec
    params: JobParams = JobParams()
    signature: Annotated[str, StringConstraints(pattern=r"^sha256=[0-9a-f]{64}$")]

    @field_validator("created_at")
    @classmethod
    def _rfc3339_utc(cls, value: str) -> str:
        parse_timestamp(value)
        return value

    @field_validator("images")
    @classmethod
    def _distinct_files(cls, images: list[ImageEntry]) -> list[ImageEntry]:
        if len({image.file for image in images}) != len(images):
            raise ValueError("an image file is listed more than once")
        stems = [PurePosixPath(image.file).stem for image in images]
        if len(set(stems)) != len(stems):
            raise ValueError("two images share a name before the extension, so their meshes would overwrite each other")
        return images

    @property
    def created(self) -> datetime:
        return parse_timestamp(self.created_at)

    @property
    def files(self) -> list[str]:
        return [image.file for image in self.images]

    def signed_fields(self) -> dict[str, Any]:
        """Exactly the fields the agent wrote, minus `signature`: what the HMAC covers.

        Defaults the agent left out (e.g. `params`) are not added, so the canonical JSON is
        the agent's, not ours.
        """
        return self.model_dump(exclude_unset=True, exclude={"signature"})


def parse_timestamp(value: str) -> datetime:
    """RFC 3339 in UTC with a literal `Z`, e.g. 2026-11-23T17:00:00Z (fractions optional)."""
    if not _TIMESTAMP_RE.fullmatch(value):
        raise ValueError("created_at must be RFC 3339 UTC like 2026-11-23T17:00:00Z")
    return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)


def format_timestamp(moment: datetime) -> str:
    """The manifest's `created_at` form for an aware datetime (seconds precision)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_manifest_json(raw: bytes) -> Any:
    """Size-limited, duplicate-key-refusing JSON decoding (`too_large`, `bad_json`)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise IntakeError("too_large", f"job.json is {len(raw)} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except UnicodeDecodeError:
        raise IntakeError("bad_json", "job.json is not UTF-8 text") from None
    except _DuplicateKey as error:
        raise IntakeError("bad_json", f"job.json repeats the key {error.key!r}") from None
    except (ValueError, RecursionError) as error:
        raise IntakeError("bad_json", f"job.json is not valid JSON ({_first_line(error)})") from None


def parse_manifest(raw: bytes) -> JobManifest:
    """Decode and validate a job.json; any problem is an IntakeError with a stable code."""
    data = load_manifest_json(raw)
    if not isinstance(data, dict):
        raise IntakeError("bad_manifest", f"job.json must be a JSON object, not {type(data).__name__}")
    job_id = data.get("job_id") if is_valid_id(data.get("job_id")) else None
    agent_id = data.get("agent_id") if is_valid_id(data.get("agent_id")) else None
    if "version" not in data:
        raise IntakeError("bad_manifest", "job.json has no version", job_id, agent_id)
    version = data["version"]
    if type(version) is not int or version != 1:
        raise IntakeError(
            "unknown_version", f"job.json version {_short(version)} is not supported (expected 1)", job_id, agent_id
        )
    try:
        return JobManifest.model_validate(data)
    except ValidationError as error:
        raise IntakeError("bad_manifest", f"job.json {_describe(error)}", job_id, agent_id) from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _describe(error: ValidationError) -> str:
    """The first schema problem as 'field a.b: reason' (one line, no input values echoed)."""
    first = error.errors(include_url=False, include_input=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "(root)"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"field {location}: {_first_line(first['msg'])}{suffix}"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_line(error: object) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

"""A small Python client of the HTTP agent API (contract section 7), used by the tests and `orfeas bench api`.

Every request is signed as the contract says (`lib/intake/requests.py`); a submission is a
signed manifest v1 plus one multipart part per image, the body built here byte for byte so
its hash can be signed before it is sent.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import httpx

from orfeas_pipelines.lib.intake.requests import signed_headers
from orfeas_pipelines.lib.intake.submit import build_manifest, new_job_id


class ApiError(RuntimeError):
    """An error answer: the HTTP status, the error code and its message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def multipart_body(parts: Sequence[tuple[str, bytes, str]]) -> tuple[str, bytes]:
    """(content type, body) of multipart/form-data with (name, bytes, content type) parts."""
    boundary = "orfeas-" + secrets.token_hex(16)
    chunks = []
    for name, data, content_type in parts:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


def job_body(
    agent_id: str,
    secret: str,
    images: Sequence[tuple[str, bytes]],
    formats: Sequence[str] = ("stl",),
    resolution: int = 128,
    seed: int = 0,
    job_id: str | None = None,
    now: datetime | None = None,
) -> tuple[str, str, bytes]:
    """(job id, content type, body) of a signed submission of `images` given as (name, bytes)."""
    now = now or datetime.now(timezone.utc)
    job_id = job_id or new_job_id(now)
    entries = [(name, hashlib.sha256(data).hexdigest()) for name, data in images]
    manifest = build_manifest(job_id, agent_id, entries, secret, formats, resolution, seed, now)
    parts = [("job.json", json.dumps(manifest).encode(), "application/json")]
    parts += [(name, data, "application/octet-stream") for name, data in images]
    content_type, body = multipart_body(parts)
    return job_id, content_type, body


class OrfeasClient:
    """Signed calls to one server as one agent."""

    def __init__(self, base_url: str, agent_id: str, secret: str, timeout: float = 30.0):
        self.agent_id = agent_id
        self.secret = secret
        self.http = httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "OrfeasClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def headers(self, method: str, target: str, body: bytes = b"") -> dict[str, str]:
        return signed_headers(self.agent_id, self.secret, method, target, hashlib.sha256(body).hexdigest())

    def request(self, method: str, target: str, body: bytes = b"", headers: dict | None = None) -> httpx.Response:
        """A signed request, returned as it came (no error raised)."""
        return self.http.request(method, target, content=body, headers={**self.headers(method, target, body), **(headers or {})})

    def health(self) -> dict:
        return _json(self.http.get("/v1/health"))

    def submit(self, images: Sequence[Path | tuple[str, bytes]], **options) -> dict:
        """Submit one job; images are paths or (name, bytes) pairs; options as `job_body`."""
        pairs = [(item.name, item.read_bytes()) if isinstance(item, Path) else item for item in images]
        _, content_type, body = job_body(self.agent_id, self.secret, pairs, **options)
        return _json(self.request("POST", "/v1/jobs", body, {"Content-Type": content_type}))

    def status(self, job_id: str) -> dict:
        return _json(self.request("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, state: str | None = None, limit: int = 50, after: str | None = None) -> dict:
        query = "&".join(f"{key}={value}" for key, value in (("state", state), ("limit", limit), ("after", after)) if value)
        return _json(self.request("GET", f"/v1/jobs?{query}"))

    def download(self, job_id: str, name: str, folder: Path) -> Path:
        response = self.request("GET", f"/v1/jobs/{job_id}/files/{name}")
        if response.status_code != 200:
            _json(response)
        path = Path(folder) / name
        path.write_bytes(response.content)
        return path

    def events(self, job_id: str) -> Iterator[dict]:
        """The job's Server-Sent Events until the stream ends (after a terminal state)."""
        target = f"/v1/jobs/{job_id}/events"
        with self.http.stream("GET", target, headers=self.headers("GET", target), timeout=None) as response:
            if response.status_code != 200:
                response.read()
                _json(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])


def _json(response: httpx.Response) -> dict:
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if response.status_code >= 400:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        raise ApiError(response.status_code, error.get("code", "?"), error.get("message", response.text[:200]))
    return payload

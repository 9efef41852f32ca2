"""Every bad request of issue 9's list against a real server: its HTTP status, its code, nothing lost or leaked."""

import asyncio
import hashlib
import json
import socket
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from orfeas_pipelines.api import ApiSettings
from orfeas_pipelines.client import OrfeasClient, job_body, multipart_body
from orfeas_pipelines.lib.intake.audit import read_audit
from orfeas_pipelines.lib.intake.registry import create_agent
from orfeas_pipelines.lib.intake.requests import signed_headers
from orfeas_pipelines.lib.intake.submit import build_manifest
from orfeas_pipelines.lib.intake.verify import ImageLimits
from orfeas_pipelines_tests.api.conftest import png


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def submission(bot, images=None, **options):
    images = images if images is not None else [("star.png", png())]
    return job_body(bot.agent_id, bot.secret, images, formats=("stl",), resolution=64, **options)


def post(client: OrfeasClient, body: bytes, content_type: str, **header_overrides) -> httpx.Response:
    headers = {**client.headers("POST", "/v1/jobs", body), "Content-Type": content_type, **header_overrides}
    return client.http.post("/v1/jobs", content=body, headers=headers)


def accepted_job(client, bot) -> str:
    job_id, content_type, body = submission(bot)
    assert post(client, body, content_type).status_code == 202
    return job_id


def test_a_forged_signature_is_401_bad_signature(client, bot):
    job_id = accepted_job(client, bot)
    forged = signed_headers(bot.agent_id, "f" * 64, "GET", f"/v1/jobs/{job_id}")
    assert error_of(client.http.get(f"/v1/jobs/{job_id}", headers=forged)) == (401, "bad_signature")
    assert error_of(client.http.get(f"/v1/jobs/{job_id}")) == (401, "bad_signature"), "unsigned"


@pytest.mark.parametrize("shift, code", [(timedelta(minutes=-11), "stale"), (timedelta(minutes=11), "future")])
def test_stale_and_future_requests_are_401(client, bot, shift, code):
    job_id = accepted_job(client, bot)
    headers = signed_headers(bot.agent_id, bot.secret, "GET", f"/v1/jobs/{job_id}", now=datetime.now(timezone.utc) + shift)
    assert error_of(client.http.get(f"/v1/jobs/{job_id}", headers=headers)) == (401, code)


def test_a_replayed_request_is_401_replay(client, bot):
    job_id = accepted_job(client, bot)
    headers = client.headers("GET", f"/v1/jobs/{job_id}")
    assert client.http.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    assert error_of(client.http.get(f"/v1/jobs/{job_id}", headers=headers)) == (401, "replay")


def test_a_signature_over_another_path_or_body_is_401(client, bot, home):
    job_id = accepted_job(client, bot)
    other_path = client.headers("GET", "/v1/jobs")
    assert error_of(client.http.get(f"/v1/jobs/{job_id}", headers=other_path)) == (401, "bad_signature")
    other_query = client.headers("GET", f"/v1/jobs/{job_id}?x=1")
    assert error_of(client.http.get(f"/v1/jobs/{job_id}", headers=other_query)) == (401, "bad_signature")

    _, content_type, body = submission(bot)
    _, _, other_body = submission(bot)
    headers = {**client.headers("POST", "/v1/jobs", other_body), "Content-Type": content_type}
    assert error_of(client.http.post("/v1/jobs", content=body, headers=headers)) == (401, "bad_signature")
    assert [entry.name for entry in home.inbox.iterdir()] == [], "the unauthenticated upload is gone"


def test_an_unknown_agent_is_401(client):
    headers = signed_headers("nobody", "0" * 64, "GET", "/v1/jobs")
    assert error_of(client.http.get("/v1/jobs", headers=headers)) == (401, "unknown_agent")


def test_another_agents_job_is_404_like_a_job_that_does_not_exist(client, bot, home, server):
    job_id = accepted_job(client, bot)
    other = create_agent(home.agents_file, "other-bot")
    with OrfeasClient(server.url, other.agent_id, other.secret) as intruder:
        foreign = intruder.request("GET", f"/v1/jobs/{job_id}")
        missing = intruder.request("GET", "/v1/jobs/20990101T000000.000000Z-00000000")
        events = intruder.request("GET", f"/v1/jobs/{job_id}/events")
        file = intruder.request("GET", f"/v1/jobs/{job_id}/files/star.stl")
        listed = intruder.jobs()
    assert error_of(foreign) == error_of(missing) == error_of(events) == error_of(file) == (404, "unknown_job")
    assert foreign.json()["error"]["message"].replace(job_id, "ID") == missing.json()["error"]["message"].replace(
        "20990101T000000.000000Z-00000000", "ID"
    )
    assert listed["jobs"] == []


def test_a_request_from_outside_the_agents_networks_is_403(client, home, server):
    fenced = create_agent(home.agents_file, "fenced", allow_from=("10.0.0.0/8",))
    with OrfeasClient(server.url, fenced.agent_id, fenced.secret) as outsider:
        assert error_of(outsider.request("GET", "/v1/jobs")) == (403, "network_not_allowed")


def test_a_permission_refusal_is_403_quarantined_and_audited(client, bot, home):
    job_id, content_type, body = job_body(bot.agent_id, bot.secret, [("star.png", png())], formats=("ply",))
    assert error_of(post(client, body, content_type)) == (403, "format_not_allowed")
    assert json.loads((home.quarantine / job_id / "reason.json").read_text())["code"] == "format_not_allowed"
    assert read_audit(home.audit_log)[-1]["code"] == "format_not_allowed"


class TestBodyLimits:
    @pytest.fixture
    def server_settings(self):
        return ApiSettings(upload_deadline_seconds=3.0, image_limits=ImageLimits(max_bytes=64 * 1024))

    def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(self, server, bot, home):
        headers = signed_headers(bot.agent_id, bot.secret, "POST", "/v1/jobs", "0" * 64)
        lines = [f"POST /v1/jobs HTTP/1.1", "Host: x", "Content-Type: multipart/form-data; boundary=b",
                 "Content-Length: 1000000000", *(f"{key}: {value}" for key, value in headers.items())]
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
            connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + b"x" * 1000)
            reply = connection.recv(65536).decode()
        assert reply.startswith("HTTP/1.1 413")
        assert '"too_large"' in reply

    def test_a_streamed_part_over_the_limit_is_413_while_it_is_read(self, client, bot, home):
        big = png() + b"\0" * (200 * 1024)
        _, content_type, body = submission(bot, [("star.png", big)])
        sent = []

        def chunks():
            for start in range(0, len(body), 16 * 1024):
                sent.append(start)
                yield body[start : start + 16 * 1024]

        headers = {**client.headers("POST", "/v1/jobs", body), "Content-Type": content_type}
        try:
            response = client.http.post("/v1/jobs", content=chunks(), headers=headers)
        except httpx.HTTPError:
            response = None  # the server may close before the client finished sending
        if response is not None:
            assert error_of(response) == (413, "too_large")
        assert read_audit(home.audit_log)[-1]["code"] == "too_large"
        assert [entry.name for entry in home.inbox.iterdir()] == [], "the partial upload is gone"

    def test_a_client_sending_a_byte_a_second_gets_408(self, server, bot, home):
        _, content_type, body = submission(bot)
        headers = signed_headers(bot.agent_id, bot.secret, "POST", "/v1/jobs", hashlib.sha256(body).hexdigest())
        lines = ["POST /v1/jobs HTTP/1.1", "Host: x", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", *(f"{key}: {value}" for key, value in headers.items())]
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            connection.settimeout(1.0)
            reply = b""
            for byte in body:
                connection.sendall(bytes([byte]))
                try:
                    reply = connection.recv(65536)
                    break
                except socket.timeout:
                    continue
        assert reply.startswith(b"HTTP/1.1 408") and b'"too_slow"' in reply
        assert time.monotonic() - started < 8
        assert [entry.name for entry in home.inbox.iterdir()] == []


def test_a_part_not_in_the_manifest_is_422(client, bot, home):
    digest = hashlib.sha256(png()).hexdigest()
    manifest = build_manifest("job-extra", bot.agent_id, [("star.png", digest)], bot.secret, ["stl"], 64, 0,
                              datetime.now(timezone.utc))
    content_type, body = multipart_body(
        [("job.json", json.dumps(manifest).encode(), "application/json"), ("star.png", png(), "image/png"),
         ("ring.png", png(), "image/png")]
    )
    assert error_of(post(client, body, content_type)) == (422, "bad_upload")
    assert not (home.jobs / "job-extra").exists()


def test_a_manifest_image_without_a_part_is_422_image_missing_and_quarantined(client, bot, home):
    digest = hashlib.sha256(png()).hexdigest()
    manifest = build_manifest("job-short", bot.agent_id, [("star.png", digest), ("ring.png", digest)], bot.secret,
                              ["stl"], 64, 0, datetime.now(timezone.utc))
    content_type, body = multipart_body(
        [("job.json", json.dumps(manifest).encode(), "application/json"), ("star.png", png(), "image/png")]
    )
    assert error_of(post(client, body, content_type)) == (422, "image_missing")
    assert json.loads((home.quarantine / "job-short" / "reason.json").read_text())["code"] == "image_missing"
    assert (home.quarantine / "job-short" / "job-short" / "star.png").read_bytes() == png()


@pytest.mark.parametrize(
    "body",
    [b"no boundary anywhere", b"--b\r\n" + b"X-Header: y\r\n" * 20 + b"\r\ndata\r\n--b--\r\n", b"--b\r\nbroken"],
)
def test_a_malformed_multipart_body_is_422_bad_upload(client, home, body):
    assert error_of(post(client, body, "multipart/form-data; boundary=b")) == (422, "bad_upload")
    assert [entry.name for entry in home.inbox.iterdir()] == []


def test_a_body_that_is_not_multipart_is_422_bad_upload(client):
    assert error_of(post(client, b"{}", "application/json")) == (422, "bad_upload")


def test_two_parts_with_one_name_are_422(client, bot):
    _, content_type, body = submission(bot)
    boundary = content_type.split("boundary=")[1]
    doubled = body.replace(f"--{boundary}--".encode(), b"") + body[body.index(b'--' + boundary.encode() + b'\r\nContent-Disposition: form-data; name="star.png"'):]
    assert error_of(post(client, doubled, content_type)) == (422, "bad_upload")


@pytest.mark.parametrize("name", ["../evil.png", "/etc/passwd", "sub/star.png", ".hidden.png"])
def test_a_path_in_a_part_name_is_422_path_not_allowed(client, bot, home, name):
    digest = hashlib.sha256(png()).hexdigest()
    manifest = build_manifest("job-path", bot.agent_id, [("star.png", digest)], bot.secret, ["stl"], 64, 0,
                              datetime.now(timezone.utc))
    content_type, body = multipart_body(
        [("job.json", json.dumps(manifest).encode(), "application/json"), (name, png(), "image/png")]
    )
    assert error_of(post(client, body, content_type)) == (422, "path_not_allowed")
    assert not (home.root / "evil.png").exists() and not (home.inbox / "evil.png").exists()


def test_a_burst_of_1000_is_refused_with_429_and_retry_after_while_others_go_on(server, home):
    flood = create_agent(home.agents_file, "flood", rate_per_minute=3)
    calm = create_agent(home.agents_file, "calm")
    image = [("star.png", png())]
    bodies = [submission(flood, image) for _ in range(1000)]

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as http:
            async def one(job):
                _, content_type, body = job
                headers = signed_headers(flood.agent_id, flood.secret, "POST", "/v1/jobs", hashlib.sha256(body).hexdigest())
                return await http.post("/v1/jobs", content=body, headers={**headers, "Content-Type": content_type})

            return await asyncio.gather(*(one(job) for job in bodies))

    responses = asyncio.run(burst())
    codes = [response.status_code for response in responses]
    assert codes.count(202) == 3 and codes.count(429) == 997
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    with OrfeasClient(server.url, calm.agent_id, calm.secret) as other:
        assert other.submit([("star.png", png())], resolution=64)["job_id"]
    assert sorted(entry.name for entry in home.inbox.iterdir()) == [], "no refused job stays behind"
    assert len(list(home.jobs.iterdir())) == 4


def test_no_secret_leaks_into_answers_logs_or_files(client, bot, home, capfd):
    accepted_job(client, bot)
    forged = signed_headers(bot.agent_id, "e" * 64, "GET", "/v1/jobs")
    answers = [client.http.get("/v1/jobs", headers=forged).text, client.request("GET", "/v1/jobs").text]
    _, content_type, body = job_body(bot.agent_id, "d" * 64, [("star.png", png())])
    answers.append(post(client, body, content_type).text)
    stored = [path.read_bytes() for path in home.root.rglob("*") if path.is_file() and path.name != "agents.json"]
    captured = capfd.readouterr()
    for text in answers + [captured.out, captured.err]:
        assert bot.secret not in text
    for data in stored:
        assert bot.secret.encode() not in data


def test_a_manifest_that_is_not_json_is_422_bad_json_and_quarantined(client, home):
    content_type, body = multipart_body([("job.json", b"{not json", "application/json"), ("star.png", png(), "image/png")])
    assert error_of(post(client, body, content_type)) == (422, "bad_json")
    [quarantined] = list(home.quarantine.iterdir())
    assert quarantined.name.startswith("http-")
    assert (quarantined / quarantined.name / "job.json").read_bytes() == b"{not json"
    assert json.loads((quarantined / "reason.json").read_text())["code"] == "bad_json"

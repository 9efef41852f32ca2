"""The HTTP API against a real server: submit, status, listing, files, events (SSE and WebSocket), health."""

import json
import threading
import time

import pytest
from websockets.sync.client import connect

from orfeas_pipelines.client import ApiError, OrfeasClient
from orfeas_pipelines.lib.intake.audit import read_audit
from orfeas_pipelines.lib.intake.ledger import IntakeLedger
from orfeas_pipelines.lib.intake.requests import signed_headers
from orfeas_pipelines.lib.intake.submit import write_job
from orfeas_pipelines_tests import shapes
from orfeas_pipelines_tests.api.conftest import png
from orfeas_pipelines_tests.conftest import settle_image, start_images


def two_images():
    return [("star.png", png()), ("ring.png", png(shapes.ring()))]


def test_a_submitted_job_is_accepted_like_a_folder_drop(client, home):
    answer = client.submit(two_images(), formats=("stl", "glb"), resolution=64)
    job_id = answer["job_id"]
    assert answer["status_url"] == f"/v1/jobs/{job_id}" and answer["events_url"] == f"/v1/jobs/{job_id}/events"
    assert sorted(path.name for path in (home.jobs / job_id).iterdir()) == ["job.json", "ring.png", "star.png"]
    assert [entry.name for entry in home.inbox.iterdir()] == [], "no staging folder left"
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        assert ledger.accepted_job(job_id).files == ["star.png", "ring.png"]
    assert read_audit(home.audit_log)[-1] | {"at": None, "seq": None} == {
        "at": None, "seq": None, "decision": "accepted", "entry": job_id, "job_id": job_id, "agent_id": "bot", "images": 2,
    }
    status = client.status(job_id)
    assert status["state"] == "queued" and status["progress"] == 0 and status["queue_position"] == 0


def test_queue_position_counts_unfinished_images_ahead(client, home):
    first = client.submit(two_images(), resolution=64)["job_id"]
    second = client.submit([("star.png", png())], resolution=64)["job_id"]
    time.sleep(1.1)  # the tracker refreshes at most once a second
    assert client.status(second)["queue_position"] == 2
    start_images(home, first, "run-1")
    settle_image(home, first, "star.png", "succeeded", outputs={"stl": "star.stl"})
    time.sleep(1.1)
    assert client.status(second)["queue_position"] == 1
    assert client.status(first)["progress"] == 55, "one image delivered, one running"


def test_progress_prefers_the_writers_field(client, home):
    job_id = client.submit([("star.png", png())], resolution=64)["job_id"]
    path = home.outbox / job_id / "status.json"
    status = json.loads(path.read_text())
    path.write_text(json.dumps({**status, "state": "running", "progress": 37}))
    assert client.status(job_id)["progress"] == 37


def test_listing_is_the_agents_own_jobs_newest_first_paginated(client, home, server):
    jobs = [client.submit([("star.png", png())], resolution=64)["job_id"] for _ in range(3)]
    start_images(home, jobs[0], "run-1")
    page = client.jobs(limit=2)
    assert [job["job_id"] for job in page["jobs"]] == [jobs[2], jobs[1]]
    rest = client.jobs(limit=2, after=page["next_after"])
    assert [job["job_id"] for job in rest["jobs"]] == [jobs[0]] and rest["next_after"] is None
    assert [job["job_id"] for job in client.jobs(state="running")["jobs"]] == [jobs[0]]
    with pytest.raises(ApiError) as refused:
        client.jobs(state="exploded")
    assert refused.value.status == 422


def test_an_output_file_downloads_and_status_json_does_not(client, home, tmp_path):
    job_id = client.submit([("star.png", png())], resolution=64)["job_id"]
    (home.outbox / job_id / "star.stl").write_bytes(b"solid mesh")
    assert client.download(job_id, "star.stl", tmp_path).read_bytes() == b"solid mesh"
    for name in ("status.json", "missing.stl", ".status.lock"):
        with pytest.raises(ApiError) as refused:
            client.download(job_id, name, tmp_path)
        assert (refused.value.status, refused.value.code) == (404, "unknown_job")


def progress_the_job(home, job_id: str, delay: float = 0.3) -> threading.Thread:
    """What a run does to the status: running, then each image lands (in another thread)."""

    def work():
        time.sleep(delay)
        start_images(home, job_id, "run-1")
        time.sleep(delay)
        settle_image(home, job_id, "star.png", "succeeded", outputs={"stl": "star.stl"})
        time.sleep(delay)
        settle_image(home, job_id, "ring.png", "succeeded", outputs={"stl": "ring.stl"})

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_server_sent_events_follow_every_change_and_end_after_the_terminal_one(client, home):
    job_id = client.submit(two_images(), resolution=64)["job_id"]
    worker = progress_the_job(home, job_id)
    events = list(client.events(job_id))
    worker.join()
    assert [(event["state"], event["progress"]) for event in events] == [
        ("queued", 0), ("running", 10), ("running", 55), ("succeeded", 100)
    ]
    assert events[-1]["images"][1]["outputs"] == {"stl": "ring.stl"}


def test_the_sse_stream_names_each_event_by_state(client, home):
    job_id = client.submit([("star.png", png())], resolution=64)["job_id"]
    start_images(home, job_id, "run-1")
    settle_image(home, job_id, "star.png", "failed", error="boom")
    target = f"/v1/jobs/{job_id}/events"
    response = client.http.get(target, headers=client.headers("GET", target))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("event: failed\ndata: {")


def test_a_websocket_gets_the_same_events(client, home, server):
    job_id = client.submit(two_images(), resolution=64)["job_id"]
    target = f"/v1/jobs/{job_id}/ws"
    headers = client.headers("GET", target)
    worker = progress_the_job(home, job_id)
    events = []
    with connect(f"ws://127.0.0.1:{server.port}{target}", additional_headers=headers) as socket:
        for message in socket:
            events.append(json.loads(message))
    worker.join()
    assert [event["state"] for event in events] == ["queued", "running", "running", "succeeded"]


def test_an_unsigned_websocket_is_refused_with_401(client, server):
    job_id = client.submit([("star.png", png())], resolution=64)["job_id"]
    with pytest.raises(Exception) as refused:
        connect(f"ws://127.0.0.1:{server.port}/v1/jobs/{job_id}/ws")
    assert "401" in str(refused.value)


def test_a_nonce_spent_over_http_is_spent_for_manifests_and_the_other_way(client, home, bot, image_files):
    nonce = "shared-nonce-0123456789"
    assert client.http.get("/v1/jobs", headers=signed_headers(bot.agent_id, bot.secret, "GET", "/v1/jobs", nonce=nonce)).status_code == 200
    time.sleep(0.5)  # the nonce writer commits every 0.1 s
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        assert ledger.nonce_seen(bot.agent_id, nonce)

    digest_job = client.submit([("star.png", png())], resolution=64)["job_id"]
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        manifest = json.loads((home.jobs / digest_job / "job.json").read_text())
        assert ledger.nonce_seen(bot.agent_id, manifest["nonce"])
    replay = signed_headers(bot.agent_id, bot.secret, "GET", "/v1/jobs", nonce=manifest["nonce"])
    assert client.http.get("/v1/jobs", headers=replay).json()["error"]["code"] == "replay"


def test_health_is_open_and_counts_the_queue(server, client, home, bot, image_files):
    client.submit(two_images(), resolution=64)
    write_job(home, image_files[:1], bot.agent_id, bot.secret)
    time.sleep(1.1)
    with OrfeasClient(server.url, "nobody", "0" * 64) as anonymous:
        health = anonymous.health()
    assert health == {"status": "ok", "inbox_entries": 1, "images_waiting": 2, "images_running": 0}


def test_the_manifest_must_be_the_requesting_agents(client, home, server):
    from orfeas_pipelines.client import job_body
    from orfeas_pipelines.lib.intake.registry import create_agent

    other = create_agent(home.agents_file, "other")
    _, content_type, body = job_body(other.agent_id, other.secret, [("star.png", png())])
    response = client.request("POST", "/v1/jobs", body, {"Content-Type": content_type})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "agent_mismatch")


def wait_for_no_subscribers(watcher) -> int:
    deadline = time.monotonic() + 5
    while watcher.subscriber_count and time.monotonic() < deadline:
        time.sleep(0.05)
    return watcher.subscriber_count


def test_a_client_that_leaves_is_unsubscribed(client, home, server):
    job_id = client.submit([("star.png", png())], resolution=64)["job_id"]
    target = f"/v1/jobs/{job_id}/ws"
    watcher = server.app.state.api.watcher
    with connect(f"ws://127.0.0.1:{server.port}{target}", additional_headers=client.headers("GET", target)) as socket:
        assert json.loads(socket.recv())["state"] == "queued"
        assert watcher.subscriber_count == 1
    assert wait_for_no_subscribers(watcher) == 0
    target = f"/v1/jobs/{job_id}/events"
    with client.http.stream("GET", target, headers=client.headers("GET", target)) as response:
        lines = response.iter_lines()  # kept: a dropped line iterator closes the response
        assert next(lines).startswith("event: queued")
        time.sleep(0.2)
        assert watcher.subscriber_count == 1
    assert wait_for_no_subscribers(watcher) == 0


def test_the_batcher_groups_waiting_calls_and_answers_each_its_own():
    import asyncio

    from orfeas_pipelines.api.app import Batcher, each_of

    batches = []

    def square(item):
        if item == 3:
            raise ValueError("three")
        return item * item

    def handle(items):
        batches.append(list(items))
        return each_of(square)(items)

    async def submit_all():
        batcher = Batcher(handle)
        return await asyncio.gather(*(batcher.submit(item) for item in range(6)), return_exceptions=True)

    answers = asyncio.run(submit_all())
    assert answers[:3] == [0, 1, 4] and answers[4:] == [16, 25]
    assert isinstance(answers[3], ValueError), "an item's exception answers that item only"
    assert sorted(item for batch in batches for item in batch) == list(range(6)) and len(batches) < 6

"""The intake ledger in Postgres shared by the HTTP API and an intake in another process, as when
the API server and the sensor run on different machines."""

import json
import subprocess
import sys

from orfeas_pipelines.client import OrfeasClient
from orfeas_pipelines.lib.intake.registry import create_agent
from orfeas_pipelines.lib.intake.requests import signed_headers
from orfeas_pipelines.lib.intake.submit import write_job
from orfeas_pipelines_tests.api.conftest import start_server, star_png
from orfeas_pipelines_tests.deploy.conftest import query

INTAKE_TICK = """
import sys
from datetime import datetime, timezone
from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.inbox import process_inbox
from orfeas_pipelines.lib.intake.ledger import open_ledger
from orfeas_pipelines.lib.intake.registry import AgentRegistry
home = OrfeasHome.at(sys.argv[1])
with open_ledger(home) as ledger:
    print(len(process_inbox(home, AgentRegistry.load(home.agents_file), ledger, datetime.now(timezone.utc)).accepted))
"""


def test_the_api_and_an_intake_in_another_process_share_nonces_and_jobs_through_postgres(
    home, postgres_url, image_files, monkeypatch
):
    monkeypatch.setenv("ORFEAS_LEDGER_URL", postgres_url)
    bot = create_agent(home.agents_file, "bot", rate_per_minute=1000, max_images=4)
    running, stop = start_server(home)
    try:
        with OrfeasClient(running.url, bot.agent_id, bot.secret) as client:
            over_http = client.submit([("star.png", star_png())], resolution=64)["job_id"]
            dropped = write_job(home, image_files[:1], bot.agent_id, bot.secret, resolution=64)
            tick = subprocess.run([sys.executable, "-c", INTAKE_TICK, str(home.root)], capture_output=True, text=True)
            assert tick.stdout.strip() == "1", tick.stderr[-2000:]

            nonce = json.loads((home.jobs / dropped / "job.json").read_text())["nonce"]
            replay = signed_headers(bot.agent_id, bot.secret, "GET", "/v1/jobs", nonce=nonce)
            assert client.http.get("/v1/jobs", headers=replay).json()["error"]["code"] == "replay"
            assert [job["job_id"] for job in client.jobs()["jobs"]] == [dropped, over_http]
    finally:
        stop()
    accepted = query(postgres_url, "SELECT job_id FROM orfeas_intake.jobs WHERE accepted = 1")
    assert sorted(accepted) == sorted([(over_http,), (dropped,)])
    assert not (home.state / "intake.sqlite").exists()

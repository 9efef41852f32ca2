import hashlib
import io
import json
import os
import sqlite3
from datetime import datetime, timezone

import pytest
from PIL import Image

from orfeas_pipelines.lib.images import ImageError
from orfeas_pipelines.lib.intake.accepted import load_accepted_image
from orfeas_pipelines.lib.intake.inbox import process_inbox
from orfeas_pipelines.lib.intake.ledger import IntakeLedger
from orfeas_pipelines.lib.intake.registry import AgentRegistry
from orfeas_pipelines_tests.lib.intake.drops import make_agent, make_home, png_bytes, resign, signed_manifest

NOW = datetime.now(timezone.utc)


@pytest.fixture
def accepted(tmp_path):
    """A home with one accepted job `job-1` whose image the agent kept a hard link to."""
    home = make_home(tmp_path / "home")
    agent = make_agent(home)
    image = png_bytes(size=20)
    staging = home.inbox / ".job-1.tmp"
    staging.mkdir()
    (staging / "a.png").write_bytes(image)
    os.link(staging / "a.png", tmp_path / "kept-link.png")
    (staging / "job.json").write_text(json.dumps(signed_manifest(agent, "job-1", {"a.png": image}, NOW)))
    os.rename(staging, home.inbox / "job-1")
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        assert [job.job_id for job in process_inbox(home, AgentRegistry.load(home.agents_file), ledger, NOW).accepted]
    return home, agent, tmp_path / "kept-link.png"


def tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="TIFF")
    return buffer.getvalue()


def test_the_run_reads_the_verified_bytes_and_intake_stored_their_facts(accepted):
    home, _, _ = accepted
    assert load_accepted_image(home, "job-1/a.png").shape == (20, 20, 4)
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        [image] = ledger.images_after(0, 10)
        assert (image.bytes, image.width, image.height) == (len(png_bytes(size=20)), 20, 20)
        assert load_accepted_image(home, "job-1/a.png", ledger).shape == (20, 20, 4)


def test_bytes_rewritten_after_acceptance_through_a_kept_link_fail_that_image(accepted):
    home, _, link = accepted
    link.write_bytes(tiff_bytes())
    with pytest.raises(ImageError, match="bytes changed after intake accepted job job-1") as caught:
        load_accepted_image(home, "job-1/a.png")
    assert caught.value.code == "hash_mismatch" and "\n" not in str(caught.value)


def test_an_image_logged_before_hashes_were_stored_is_checked_against_the_signed_manifest(accepted):
    home, agent, link = accepted
    with sqlite3.connect(home.state / "intake.sqlite") as db:
        db.execute("UPDATE images SET sha256 = NULL, bytes = NULL, width = NULL, height = NULL")
    assert load_accepted_image(home, "job-1/a.png").shape == (20, 20, 4)

    forged = png_bytes(color=(0, 0, 255, 255))
    manifest = json.loads((home.jobs / "job-1" / "job.json").read_text())
    manifest["images"][0]["sha256"] = hashlib.sha256(forged).hexdigest()
    (home.jobs / "job-1" / "job.json").write_text(json.dumps(manifest))
    link.write_bytes(forged)
    with pytest.raises(ImageError, match="no longer carries a valid signature"):
        load_accepted_image(home, "job-1/a.png")
    (home.jobs / "job-1" / "job.json").write_text(json.dumps(resign(manifest, agent.secret)))
    assert load_accepted_image(home, "job-1/a.png").shape == (16, 16, 4)


def test_unknown_or_malformed_keys_are_one_line_errors(accepted):
    home, _, _ = accepted
    with pytest.raises(ImageError, match="no accepted image b.png"):
        load_accepted_image(home, "job-1/b.png")
    with pytest.raises(ImageError, match="partition key"):
        load_accepted_image(home, "../etc/passwd")

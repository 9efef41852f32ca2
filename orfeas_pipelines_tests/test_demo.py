"""`orfeas demo`: the samples through signed jobs, the real sensor and one range run."""

import io

import pytest

from orfeas_pipelines.demo import run_demo
from orfeas_pipelines.lib import outbox
from orfeas_pipelines.lib.intake.audit import read_audit
from orfeas_pipelines.lib.samples import sample_image_paths


@pytest.mark.slow
def test_demo_delivers_a_valid_mesh_for_every_sample_in_one_run(home):
    printed = io.StringIO()
    assert run_demo(home, out=printed) == 0
    table = printed.getvalue()
    samples = sample_image_paths()
    assert 4 <= len(samples) <= 6
    for sample in samples:
        assert sample.name in table
    assert "demo succeeded" in table
    accepted = [line for line in read_audit(home.audit_log) if line["decision"] == "accepted"]
    assert len(accepted) == len(samples)
    run_ids = {tuple(outbox.read_status(home, line["job_id"])["run_ids"]) for line in accepted}
    assert len(run_ids) == 1 and len(next(iter(run_ids))) == 1, "all samples in one batched run"

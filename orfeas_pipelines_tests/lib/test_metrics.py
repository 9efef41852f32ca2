"""Metrics read from durable sources at scrape time: batches, audit.log, status files; across restarts."""

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orfeas_pipelines.lib.intake.audit import append_audit, audit_record
from orfeas_pipelines.lib.intake.submit import write_job
from orfeas_pipelines.lib.metrics import METRIC_NAMES, OrfeasCollector, record_batch
from orfeas_pipelines.lib.queue import JobTracker
from orfeas_pipelines_tests.conftest import settle_image, start_images


def scrape(home) -> dict[tuple[str, tuple], float]:
    """One scrape by a fresh collector (as after a restart): {(sample name, sorted labels): value}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrfeasCollector(home, JobTracker(home)))
    return samples(generate_latest(registry).decode())


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def accept_jobs(home, agent, image_files, count):
    from datetime import datetime, timezone

    from orfeas_pipelines.lib.intake.inbox import process_inbox
    from orfeas_pipelines.lib.intake.ledger import IntakeLedger
    from orfeas_pipelines.lib.intake.registry import AgentRegistry

    jobs = [write_job(home, image_files[index : index + 2], agent.agent_id, agent.secret) for index in range(0, 2 * count, 2)]
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        process_inbox(home, AgentRegistry.load(home.agents_file), ledger, datetime.now(timezone.utc))
    return jobs


def test_batches_from_another_process_are_histograms_by_backend_and_device(home):
    record_batch(home, "inflate", "cpu", 4, 0.3, 0, False)
    record_batch(home, "hunyuan3d", "cuda", 8, 12.0, 6_000_000_000, True, memory_in_use_bytes=2_000_000_000)
    record_batch(home, "hunyuan3d", "cuda", 4, 7.0, 5_000_000_000, False, memory_in_use_bytes=1_000_000_000)
    values = scrape(home)
    cuda = (("backend", "hunyuan3d"), ("device", "cuda"))
    assert values[("orfeas_generation_seconds_count", cuda)] == 2
    assert values[("orfeas_generation_seconds_sum", cuda)] == pytest.approx(19.0)
    assert values[("orfeas_generation_seconds_bucket", tuple(sorted(cuda + (("le", "10.0"),))))] == 1
    assert values[("orfeas_batch_size_sum", cuda)] == 12
    assert values[("orfeas_oom_halvings_total", cuda)] == 1
    assert values[("orfeas_device_memory_peak_bytes", cuda)] == 6_000_000_000
    assert values[("orfeas_device_memory_in_use_bytes", cuda)] == 1_000_000_000
    assert values[("orfeas_batch_size_count", (("backend", "inflate"), ("device", "cpu")))] == 1


def test_intake_decisions_come_from_the_audit_log_read_incrementally(home):
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    append_audit(home.audit_log, [audit_record(now, "accepted", "a"), audit_record(now, "rejected", "b", code="stale")])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrfeasCollector(home, JobTracker(home)))
    first = samples(generate_latest(registry).decode())
    append_audit(home.audit_log, [audit_record(now, "rejected", "c", code="stale")])
    second = samples(generate_latest(registry).decode())
    assert first[("orfeas_intake_decisions_total", (("code", "stale"), ("decision", "rejected")))] == 1
    assert second[("orfeas_intake_decisions_total", (("code", "stale"), ("decision", "rejected")))] == 2
    assert second[("orfeas_intake_decisions_total", (("code", ""), ("decision", "accepted")))] == 1

    home.audit_log.write_text(json.dumps({"decision": "deferred", "entry": "d"}) + "\n")
    third = samples(generate_latest(registry).decode())
    assert ("orfeas_intake_decisions_total", (("code", "stale"), ("decision", "rejected"))) not in third
    assert third[("orfeas_intake_decisions_total", (("code", ""), ("decision", "deferred")))] == 1


def test_queue_depth_and_final_states_survive_a_restart(home, agent, image_files):
    jobs = accept_jobs(home, agent, image_files, 2)
    write_job(home, image_files[:1], agent.agent_id, agent.secret)
    values = scrape(home)
    assert values[("orfeas_queue_inbox_entries", ())] == 1
    assert values[("orfeas_queue_images_waiting", ())] == 4
    assert values[("orfeas_images_total", (("state", "succeeded"),))] == 0

    start_images(home, jobs[0], "run-1")
    settle_image(home, jobs[0], "star.png", "succeeded", outputs={"stl": "star.stl"})
    settle_image(home, jobs[0], "ring.png", "failed", error="boom")
    start_images(home, jobs[1], "run-2")
    values = scrape(home)
    assert values[("orfeas_queue_images_waiting", ())] == 0
    assert values[("orfeas_queue_images_running", ())] == 2
    assert values[("orfeas_images_total", (("state", "succeeded"),))] == 1
    assert values[("orfeas_images_total", (("state", "failed"),))] == 1

    settle_image(home, jobs[1], "vase.png", "succeeded", outputs={"stl": "vase.stl"})
    settle_image(home, jobs[1], "disk.png", "succeeded", outputs={"stl": "disk.stl"})
    values = scrape(home)
    assert values[("orfeas_images_total", (("state", "succeeded"),))] == 3
    assert values[("orfeas_queue_images_running", ())] == 0


def test_queue_positions_count_unfinished_images_ahead(home, agent, image_files):
    jobs = accept_jobs(home, agent, image_files, 2)
    tracker = JobTracker(home, min_interval=0)
    assert [tracker.queue_position(job) for job in jobs] == [0, 2]
    start_images(home, jobs[0], "run-1")
    settle_image(home, jobs[0], "star.png", "succeeded")
    settle_image(home, jobs[0], "ring.png", "succeeded")
    assert [tracker.queue_position(job) for job in jobs] == [None, 0]


def test_every_exported_family_is_named_in_metric_names(home):
    record_batch(home, "inflate", "cpu", 1, 0.1, 0, False, memory_in_use_bytes=0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrfeasCollector(home, JobTracker(home)))
    families = {family.name for family in text_string_to_metric_families(generate_latest(registry).decode())}
    exported = {name.removesuffix("_total") for name in METRIC_NAMES}
    assert families == exported
    assert all(name.startswith("orfeas_") for name in METRIC_NAMES)

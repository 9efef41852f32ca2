"""The Grafana dashboard charts exactly what /metrics exports: no query names a metric that does not exist."""

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orfeas_pipelines.lib.intake.audit import append_audit, audit_record
from orfeas_pipelines.lib.metrics import OrfeasCollector, record_batch
from orfeas_pipelines.lib.queue import JobTracker

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "orfeas.json"


def exported_sample_names(home) -> set[str]:
    """Every sample name a scrape shows once each kind of metric has data (histogram buckets included)."""
    record_batch(home, "inflate", "cpu", 2, 0.5, 1024, True, memory_in_use_bytes=512)
    append_audit(home.audit_log, [audit_record(datetime.now(timezone.utc), "rejected", "x", code="stale")])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrfeasCollector(home, JobTracker(home)))
    text = generate_latest(registry).decode()
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    families = {family.name for family in text_string_to_metric_families(text)}
    return names | families


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_query_names_only_exported_metrics(home):
    exported = exported_sample_names(home)
    queries = dashboard_queries()
    assert queries
    for query in queries:
        named = set(re.findall(r"\borfeas_[a-z0-9_]+", query))
        assert named, f"query names no orfeas metric: {query}"
        assert named <= exported, f"{query}: {sorted(named - exported)} not exported"


def test_every_exported_family_has_a_panel(home):
    exported = exported_sample_names(home)
    charted = {name for query in dashboard_queries() for name in re.findall(r"\borfeas_[a-z0-9_]+", query)}
    families = {name for name in exported if not name.endswith(("_bucket", "_sum", "_count", "_created"))}
    uncharted = {family for family in families if not any(name.startswith(family) for name in charted)}
    assert not uncharted

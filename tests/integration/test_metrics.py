"""/metrics of two workers in one group: sums over workers equal an independent count."""

from __future__ import annotations

import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from factories import event
from kafka_tools import produce
from prometheus_client.parser import text_string_to_metric_families

from app.embedded import free_port, settings_with, wait_until
from app.roster import Profile, write_profiles
from app.settings import Settings

pytestmark = pytest.mark.integration
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(settings: Settings) -> Samples:
    with urllib.request.urlopen(settings.web_url + "/metrics", timeout=15) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(workers: list[Settings], name: str, **labels: str) -> float:
    """The sum over workers of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for settings in workers
               for (sample, found), value in scrape(settings).items()
               if sample == name and wanted <= found)


def test_two_workers_export_each_figure_once(make_settings, worker_factory,
                                             tmp_path: Path) -> None:
    first = make_settings(partitions=4, session_timeout_s=6)
    second = settings_with(first, web_port=free_port(), data_dir=tmp_path / "second")
    users = [f"rep-{i}" for i in range(12)]
    write_profiles(first, [
        Profile(user_id=u, team_id=f"team-{i % 2}", office_id="berlin", role="sales_rep",
                timezone="Europe/Berlin") for i, u in enumerate(users)])
    workers = [first, second]
    for settings in workers:
        worker_factory(settings)

    now = datetime.now(UTC).isoformat()
    events = [event(u, kind, occurred_at=now, source="hubspot", feature="leads")
              for i, u in enumerate(users) for kind in ("call", "email")[: 1 + i % 2]]
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    records.append((b"rep-0", b"{not json"))
    produce(first, records + records[:3])  # three deliveries twice
    calls = Counter(f"team-{users.index(e['user_id']) % 2}" for e in events
                    if e["type"] == "call")

    wait_until(lambda: total(workers, "crm_pulse_events_total") == len(events), 60,
               f"{len(events)} events counted over both workers")
    assert total(workers, "crm_pulse_events_total", type="call", source="hubspot") == 12
    assert total(workers, "crm_pulse_duplicates_total") == 3
    assert total(workers, "crm_pulse_dead_letters_total", reason="invalid_json") == 1
    assert total(workers, "crm_pulse_features_used_total", feature="leads") == len(events)
    for team, count in calls.items():
        assert total(workers, "crm_pulse_kpi_value", scope="team", id=team, kpi="calls",
                     period="day") == count
    assert total(workers, "crm_pulse_kpi_value", scope="office", id="berlin", kpi="calls",
                 period="day") == 12
    assert total(workers, "crm_pulse_active_users", scope="all", id="all",
                 period="day") == len(users)
    targets = [scrape(s).get(("crm_pulse_kpi_target", frozenset(
        {"scope": "team", "id": "team-0", "kpi": "calls", "period": "day"}.items())))
        for s in workers]
    assert targets == [60, 60]  # six sales reps x 10 calls, on every worker (max over them)
    assert total(workers, "crm_pulse_event_latency_seconds_count") == len(events)
    lag = sum(1 for s in workers for (name, _), _ in scrape(s).items()
              if name == "crm_pulse_consumer_lag")
    assert lag == 4  # each partition once
    assert not any(name == "crm_pulse_user_kpi_value" for name, _ in scrape(first))

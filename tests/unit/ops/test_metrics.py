"""The Prometheus recorder: the SPEC section 6 table, scraped over real HTTP.

Each test starts its own :class:`Metrics` on 127.0.0.1:0 (each has its own
registry) and reads /metrics and /healthz the way Prometheus would.
"""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bgsyncd.api.endpoints import ENDPOINTS
from bgsyncd.ops.metrics import OUTCOMES, Metrics, Recorder
from bgsyncd.reasons import REASONS
from bgsyncd.storage.contract import STATES
from tests.support.helpers import FakeClock
from tests.support.prometheus import CONTRACT

FOLDERS = ("products", "catalogue")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def metrics(clock: FakeClock) -> Iterator[Metrics]:
    m = Metrics("127.0.0.1:0", FOLDERS, "1.2.3", clock=clock, stall_seconds=30.0)
    m.start()
    yield m
    m.stop()


def get(m: Metrics, path: str) -> tuple[int, str]:
    """GET ``path`` from the running server: (status, body)."""
    url = f"http://127.0.0.1:{m.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(m: Metrics) -> dict[str, Any]:
    """Scrape /metrics: {contract name: family}, counters under their ``_total`` name."""
    status, text = get(m, "/metrics")
    assert status == 200
    families = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = family
    return families


def value(m: Metrics, sample_name: str, **labels: str) -> float:
    """The one sample called ``sample_name`` with exactly ``labels``."""
    found = [
        s
        for family in scrape(m).values()
        for s in family.samples
        if s.name == sample_name and s.labels == labels
    ]
    assert len(found) == 1, f"{sample_name}{labels}: {found}"
    return float(found[0].value)


def samples(m: Metrics, sample_name: str) -> list[Sample]:
    return [s for f in scrape(m).values() for s in f.samples if s.name == sample_name]


def test_exposition_is_exactly_the_contract(metrics: Metrics) -> None:
    families = scrape(metrics)
    assert set(families) == set(CONTRACT)
    for name, (kind, labels) in CONTRACT.items():
        family = families[name]
        assert family.type == kind, name
        assert family.documentation, f"{name} has no HELP"
        assert family.samples, f"{name} has no series at start"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
            assert not sample.name.endswith("_created"), sample


def test_series_exist_from_the_start(metrics: Metrics) -> None:
    assert value(metrics, "bgsyncd_build_info", version="1.2.3") == 1
    for folder in FOLDERS:
        assert value(metrics, "bgsyncd_files_discovered_total", folder=folder) == 0
        for outcome in OUTCOMES:
            assert (
                value(metrics, "bgsyncd_jobs_finished_total", folder=folder, outcome=outcome) == 0
            )
        assert value(metrics, "bgsyncd_job_duration_seconds_count", folder=folder) == 0
        assert value(metrics, "bgsyncd_last_success_timestamp_seconds", folder=folder) == 0
        # Not watched yet: the watcher says when it is.
        assert value(metrics, "bgsyncd_folder_up", folder=folder) == 0
    for state in STATES:
        assert value(metrics, "bgsyncd_jobs", state=state) == 0
    for reason in REASONS:
        assert value(metrics, "bgsyncd_dispatch_paused", reason=reason) == 0
    for endpoint in ENDPOINTS:
        assert value(metrics, "bgsyncd_api_request_duration_seconds_count", endpoint=endpoint) == 0
        assert value(metrics, "bgsyncd_api_requests_total", endpoint=endpoint, code="200") == 0
    # Credits are unknown until the first check: NaN, never a misleading 0.
    assert math.isnan(value(metrics, "bgsyncd_credits_available"))
    assert math.isnan(value(metrics, "bgsyncd_credits_expiry_timestamp_seconds"))


def test_jobs_are_counted_and_timed(metrics: Metrics, clock: FakeClock) -> None:
    metrics.file_discovered("products")
    metrics.file_discovered("products")
    metrics.job_finished("products", "success", 3.0)
    metrics.job_finished("products", "cached", 1.0)
    clock.t += 100
    metrics.job_finished("catalogue", "quarantined", None)
    assert value(metrics, "bgsyncd_files_discovered_total", folder="products") == 2
    assert value(metrics, "bgsyncd_jobs_finished_total", folder="products", outcome="success") == 1
    assert value(metrics, "bgsyncd_jobs_finished_total", folder="products", outcome="cached") == 1
    assert (
        value(metrics, "bgsyncd_jobs_finished_total", folder="catalogue", outcome="quarantined")
        == 1
    )
    assert value(metrics, "bgsyncd_job_duration_seconds_count", folder="products") == 2
    assert value(metrics, "bgsyncd_job_duration_seconds_sum", folder="products") == 4.0
    assert value(metrics, "bgsyncd_job_duration_seconds_bucket", folder="products", le="1.0") == 1
    # A quarantine is neither timed nor a success.
    assert value(metrics, "bgsyncd_job_duration_seconds_count", folder="catalogue") == 0
    assert value(metrics, "bgsyncd_last_success_timestamp_seconds", folder="catalogue") == 0
    assert value(metrics, "bgsyncd_last_success_timestamp_seconds", folder="products") == (
        clock.t - 100
    )


def test_api_credits_pauses_and_queue(metrics: Metrics) -> None:
    metrics.api_request("alpha-channel", "200", 0.4)
    metrics.api_request("alpha-channel", "429", 0.2)
    metrics.api_request("available-credit", "error", 120.0)
    metrics.rate_limited()
    metrics.resend()
    metrics.credits(42, 1_800_000_000.0)
    metrics.credits_floor(10)
    metrics.jobs({"pending": 5, "in_flight": 3, "done": 7}, 12.5)
    metrics.paused("credit_floor")
    assert value(metrics, "bgsyncd_api_requests_total", endpoint="alpha-channel", code="429") == 1
    assert value(metrics, "bgsyncd_api_requests_total", endpoint="available-credit", code="error")
    assert (
        value(metrics, "bgsyncd_api_request_duration_seconds_count", endpoint="alpha-channel") == 2
    )
    assert (
        value(
            metrics,
            "bgsyncd_api_request_duration_seconds_bucket",
            endpoint="alpha-channel",
            le="0.25",
        )
        == 1
    )
    assert value(metrics, "bgsyncd_rate_limited_total") == 1
    assert value(metrics, "bgsyncd_resends_total") == 1
    assert value(metrics, "bgsyncd_credits_available") == 42
    assert value(metrics, "bgsyncd_credits_expiry_timestamp_seconds") == 1_800_000_000
    assert value(metrics, "bgsyncd_credits_floor") == 10
    assert value(metrics, "bgsyncd_jobs", state="pending") == 5
    assert value(metrics, "bgsyncd_jobs", state="retry_wait") == 0  # missing from the counts
    assert value(metrics, "bgsyncd_oldest_pending_age_seconds") == 12.5
    paused = {s.labels["reason"]: s.value for s in samples(metrics, "bgsyncd_dispatch_paused")}
    assert paused == {r: (1 if r == "credit_floor" else 0) for r in REASONS}

    metrics.paused("invalid_api_key")
    assert value(metrics, "bgsyncd_dispatch_paused", reason="invalid_api_key") == 1
    assert value(metrics, "bgsyncd_dispatch_paused", reason="credit_floor") == 0
    metrics.paused(None)
    assert all(s.value == 0 for s in samples(metrics, "bgsyncd_dispatch_paused"))
    metrics.credits(None, None)
    metrics.jobs({}, None)
    assert math.isnan(value(metrics, "bgsyncd_credits_available"))
    assert value(metrics, "bgsyncd_oldest_pending_age_seconds") == 0


def test_the_next_request_counts_down_between_reports(metrics: Metrics, clock: FakeClock) -> None:
    assert value(metrics, "bgsyncd_dispatch_next_request_seconds") == 0  # may start now
    metrics.next_request(42.0)
    clock.advance(10.0)
    assert value(metrics, "bgsyncd_dispatch_next_request_seconds") == 32.0
    clock.advance(100.0)
    assert value(metrics, "bgsyncd_dispatch_next_request_seconds") == 0
    metrics.next_request(math.nan)  # paused until a rule of its own lifts it
    assert math.isnan(value(metrics, "bgsyncd_dispatch_next_request_seconds"))


def test_folder_added_on_reload_gets_its_series(metrics: Metrics) -> None:
    assert not [
        s for s in samples(metrics, "bgsyncd_files_discovered_total") if s.labels["folder"] == "new"
    ]
    metrics.add_folder("new")
    assert value(metrics, "bgsyncd_files_discovered_total", folder="new") == 0
    assert value(metrics, "bgsyncd_jobs_finished_total", folder="new", outcome="cached") == 0
    assert value(metrics, "bgsyncd_last_success_timestamp_seconds", folder="new") == 0


def test_folder_up_follows_the_watcher_and_survives_a_reload(metrics: Metrics) -> None:
    metrics.folder_up("products", True)
    metrics.folder_up("catalogue", True)
    metrics.folder_up("catalogue", False)  # its inbox was lost
    assert value(metrics, "bgsyncd_folder_up", folder="products") == 1
    assert value(metrics, "bgsyncd_folder_up", folder="catalogue") == 0
    # A reload creates the series of every folder again: values already set stay.
    for folder in (*FOLDERS, "new"):
        metrics.add_folder(folder)
    assert value(metrics, "bgsyncd_folder_up", folder="products") == 1
    assert value(metrics, "bgsyncd_folder_up", folder="catalogue") == 0
    assert value(metrics, "bgsyncd_folder_up", folder="new") == 0
    metrics.folder_up("catalogue", True)  # restored
    assert value(metrics, "bgsyncd_folder_up", folder="catalogue") == 1


def test_a_folder_a_reload_removed_has_no_folder_up_even_if_its_old_watcher_reports(
    metrics: Metrics,
) -> None:
    metrics.folder_up("products", True)
    metrics.retire_folder("products")
    metrics.folder_up("products", True)  # the replaced watcher, not yet stopped
    samples = [s for f in scrape(metrics).values() for s in f.samples]
    assert [
        s for s in samples if s.name == "bgsyncd_folder_up" and s.labels["folder"] == "products"
    ] == []
    assert value(metrics, "bgsyncd_files_discovered_total", folder="products") == 0  # history stays
    metrics.add_folder("products")  # configured again
    metrics.folder_up("products", True)
    assert value(metrics, "bgsyncd_folder_up", folder="products") == 1


def test_healthz_follows_the_heartbeat(metrics: Metrics, clock: FakeClock) -> None:
    assert get(metrics, "/healthz") == (200, "ok\n")  # grace period after start
    clock.t += 29
    metrics.heartbeat()
    clock.t += 29.9
    assert get(metrics, "/healthz") == (200, "ok\n")
    clock.t += 0.2  # 30.1 s since the last heartbeat: the loop is stalled
    status, body = get(metrics, "/healthz")
    assert status == 503
    assert "stalled" in body
    metrics.heartbeat()
    assert get(metrics, "/healthz")[0] == 200
    assert get(metrics, "/nothing-here")[0] == 404


def test_a_failing_recording_is_swallowed(metrics: Metrics) -> None:
    metrics.credits(5, None)
    metrics.credits("lots", None)  # type: ignore[arg-type]  # float("lots") raises inside
    metrics.job_finished("products", "success", "slow")  # type: ignore[arg-type]
    metrics.jobs({"pending": "many"}, None)  # type: ignore[dict-item]
    assert value(metrics, "bgsyncd_credits_available") == 5  # unchanged
    # The server still answers, and later calls still record.
    metrics.rate_limited()
    assert value(metrics, "bgsyncd_rate_limited_total") == 1


def test_instances_do_not_share_a_registry(clock: FakeClock) -> None:
    a = Metrics("", ["x"], "1", clock=clock)
    b = Metrics("", ["x"], "1", clock=clock)
    a.rate_limited()
    assert a.registry.get_sample_value("bgsyncd_rate_limited_total") == 1
    assert b.registry.get_sample_value("bgsyncd_rate_limited_total") == 0


def test_empty_listen_disables_serving(clock: FakeClock) -> None:
    m = Metrics("", FOLDERS, "1.2.3", clock=clock)
    m.start()
    assert m.port is None
    m.file_discovered("products")  # still records, harmlessly
    m.stop()


def test_stop_closes_the_port(clock: FakeClock) -> None:
    m = Metrics("127.0.0.1:0", FOLDERS, "1", clock=clock)
    m.start()
    port = m.port
    assert port
    m.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_ipv6_listen(clock: FakeClock) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    m = Metrics("[::1]:0", FOLDERS, "1", clock=clock)
    m.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{m.port}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        m.stop()


def test_metrics_overrides_every_call_of_the_null_recorder() -> None:
    # A recording added to Recorder but not to Metrics would silently record nothing.
    calls = {n for n, v in vars(Recorder).items() if callable(v) and not n.startswith("_")}
    assert {"file_discovered", "job_finished", "api_request", "heartbeat"} <= calls
    assert sorted(calls - set(vars(Metrics))) == []


def test_the_null_recorder_keeps_nothing() -> None:
    r = Recorder()
    r.file_discovered("f")
    r.job_finished("f", "success", 1.0)
    r.api_request("alpha-channel", "200", 0.1)
    r.rate_limited()
    r.credits(1, None)
    r.credits_floor(0)
    r.paused("credit_floor")
    r.jobs({"pending": 1}, 1.0)
    r.resend()
    r.heartbeat()
    r.add_folder("g")
    assert vars(r) == {}


def test_hook_tries_are_counted_by_folder_kind_and_result(metrics: Metrics) -> None:
    labels = {"folder": "products", "kind": "webhook", "result": "failed"}
    assert value(metrics, "bgsyncd_hooks_total", **labels) == 0  # there from the start
    metrics.hook_finished("products", "webhook", "failed")
    metrics.hooks_pending(3)
    assert value(metrics, "bgsyncd_hooks_total", **labels) == 1
    assert value(metrics, "bgsyncd_hooks_pending") == 3

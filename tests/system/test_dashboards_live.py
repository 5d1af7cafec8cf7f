"""The dashboard and the alert rules, proven against a live Prometheus.

A real Prometheus (Debian's ``prometheus`` package) scrapes a real
``bgsyncd run`` every second while it processes files against the emulator,
quarantines one and pauses at the credit floor. Then every expression of
``monitoring/grafana-dashboard.json`` and ``monitoring/alerts.yml`` (read from
the files, so panels and rules added later are covered too) goes through
Prometheus's HTTP API: each parses, each dashboard panel returns data over the
run as Grafana would draw it, and the rules load and evaluate without error.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    free_port,
    make_folder,
    start_daemon,
    write_config,
)
from tests.support.helpers import product_image, wait_until
from tests.support.prometheus import MONITORING, RULES

DASHBOARD = MONITORING / "grafana-dashboard.json"
SCRAPE_SECONDS = 1
# Grafana's $__rate_interval is at least four scrape intervals; a little more
# keeps a rate defined across one missed scrape on a busy machine.
RATE_INTERVAL = "10s"

# Panel queries (by panel title and the query's refId) that have no data in
# this run, and why. Nothing else may be empty. None is: every panel query has
# a number at some step of the run. Two only ever show 0 here, which is data
# (Grafana draws the flat line) and right for this run: "Re-sends and rate
# limiting" A and B (no answer was lost, so nothing was re-sent; the emulator's
# limit is far above the daemon's pace, so no 429). Per-endpoint rows of "API
# request latency" for endpoints this run never called are NaN beside the
# rows that have numbers. "Pending", "Paused" and "Oldest pending" have data
# because the credit floor holds the fourth file back.
LEGITIMATELY_EMPTY: dict[tuple[str, str], str] = {}

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="the prometheus server is not installed"
)


class Prometheus:
    """A Prometheus server subprocess on loopback, and its HTTP API."""

    def __init__(self, tmp: Path, target: str, rule_files: list[Path]) -> None:
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_SECONDS}s",
                "evaluation_interval": f"{SCRAPE_SECONDS}s",
            },
            "rule_files": [str(p) for p in rule_files],
            # The alert rules expect a job whose name starts with "bgsyncd".
            "scrape_configs": [{"job_name": "bgsyncd", "static_configs": [{"targets": [target]}]}],
        }
        config_path = tmp / "prometheus.yml"
        config_path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = tmp / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.time()

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str | float) -> Any:
        """GET ``/api/v1/PATH``; the ``data`` of a successful answer, else AssertionError."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:  # 400 and 422 carry the parse error
            body = json.load(exc)
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector, or a scalar as one sample)."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        assert data["resultType"] == "vector", data
        return list(result)

    def has_data(self, expr: str, start: float, end: float) -> bool:
        """Whether a range query, as Grafana sends for a panel, has a number in it."""
        data = self.api("query_range", query=expr, start=start, end=end, step=SCRAPE_SECONDS)
        return any(
            value not in ("NaN", "+Inf", "-Inf")
            for series in data["result"]
            for _, value in series["values"]
        )

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def dashboard_queries() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """The panel queries (title, refId, expr) and the variable queries (name, query)."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels: list[dict[str, Any]] = []
    for panel in board["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    targets = [
        (p["title"], t.get("refId", "?"), t["expr"]) for p in panels for t in p.get("targets", [])
    ]
    variables = []
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            variables.append((var["name"], query["query"] if isinstance(query, dict) else query))
    return targets, variables


def substitute(expr: str) -> str:
    """Grafana's variables as it sends them with "All" selected."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    values = {"__rate_interval": RATE_INTERVAL}
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            values[var["name"]] = var.get("allValue") or ".*"
        elif var["type"] == "constant":
            values[var["name"]] = str(var["query"])
    # Longest names first: $instance must not be read as $in + "stance".
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, expr
    return expr


def rule_names() -> list[str]:
    """The name of every rule in alerts.yml (its expressions come from Prometheus)."""
    text = RULES.read_text(encoding="utf-8")
    return re.findall(r"^\s*-\s*(?:alert|record):\s*(\S+)\s*$", text, re.MULTILINE)


@pytest.fixture
def prometheus_and_daemon(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> Iterator[tuple[Prometheus, Emulator, DaemonProcess, Path]]:
    # 13 credits and a floor of 10: exactly three files are sent, then the floor pauses.
    with Emulator(keys=[TEST_KEY], credits=13, rate_limit=1000, seed=1) as emu:
        metrics = f"127.0.0.1:{free_port()}"
        folder = make_folder(tmp_path, "products")
        config = write_config(
            tmp_path / "bgsyncd.toml",
            base_url=emu.url,
            folders=[folder],
            credits={"floor": 10},
            metrics_listen=metrics,
        )
        prom = Prometheus(tmp_path, metrics, [RULES])
        try:
            wait_until(prom.ready, 60, interval=0.2, what="prometheus ready")
            daemon = start_daemon(daemons, config)
            yield prom, emu, daemon, Path(folder["inbox"])
        finally:
            prom.stop()


def test_every_panel_and_rule_works_on_a_live_prometheus(
    prometheus_and_daemon: tuple[Prometheus, Emulator, DaemonProcess, Path],
) -> None:
    prom, emu, daemon, inbox = prometheus_and_daemon
    outbox = inbox.parent / "outbox"
    quarantine = inbox.parent / "quarantine"

    def scraped(expr: str) -> bool:
        return bool(prom.query(expr))

    wait_until(lambda: scraped('up{job="bgsyncd"} == 1'), 30, 0.2, what="first scrape")
    # The broken file first: once paused, nothing is dispatched, local verdicts included.
    (inbox / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 20)
    wait_until(lambda: any(quarantine.glob("broken.jpg*")), 60, what="the quarantined file")
    for n in range(4):
        (inbox / f"photo-{n}.jpg").write_bytes(product_image(64 + n, 48))
    wait_until(lambda: len(list(outbox.glob("*.png"))) == 3, 60, what="three cut-outs")
    wait_until(lambda: daemon.saw("dispatch.paused", reason="credit_floor"), 60, what="pause")
    assert emu.credits == 10
    # Prometheus has seen all of it, and enough scrapes after it for rate() windows.
    for expr in (
        'bgsyncd_dispatch_paused{reason="credit_floor"} == 1',
        'sum(bgsyncd_jobs_finished_total{outcome="success"}) == 3',
        'sum(bgsyncd_jobs_finished_total{outcome="quarantined"}) == 1',
        f'sum(increase(bgsyncd_jobs_finished_total{{outcome="success"}}[{RATE_INTERVAL}])) > 0',
        f"count_over_time(bgsyncd_dispatch_paused[{RATE_INTERVAL}]) >= 3",
    ):
        wait_until(lambda e=expr: scraped(e), 60, 0.2, what=expr)  # type: ignore[misc]
    start, end = prom.started, time.time()

    # The checks below can fail: a broken query and a query without data are told apart.
    with pytest.raises(AssertionError, match="parse error"):
        prom.query("sum(bgsyncd_jobs")
    assert not prom.has_data("bgsyncd_no_such_metric", start, end)

    targets, variables = dashboard_queries()
    assert len(targets) >= 20 and len(variables) >= 3
    empty = []
    for title, ref, expr in targets:
        query = substitute(expr)
        prom.query(query)  # parses and evaluates (AssertionError with the message otherwise)
        if not prom.has_data(query, start, end):
            empty.append((title, ref))
    assert empty == list(LEGITIMATELY_EMPTY), "panels without data: " + ", ".join(
        f"{t} [{r}]" for t, r in empty
    )

    # Variables: Grafana's label_values(SELECTOR, LABEL) asks for the series of SELECTOR.
    for name, query in variables:
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
        assert match, f"variable {name}: {query}"
        selector, label = substitute(match[1]), match[2]
        params: dict[str, str | float] = {"match[]": selector, "start": start, "end": end}
        series = prom.api("series", **params)
        assert {s.get(label) for s in series} - {None}, f"variable {name} has no values"

    # Alert rules: Prometheus loaded every rule of the file; each expression, as it
    # read it, parses and evaluates through the query API; every rule is healthy.
    def rules() -> list[dict[str, Any]]:
        return [r for g in prom.api("rules")["groups"] for r in g["rules"]]

    assert sorted(r["name"] for r in rules()) == sorted(rule_names())
    assert len(rule_names()) >= 8
    for rule in rules():
        prom.query(rule["query"])
    wait_until(
        lambda: all(
            r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2") for r in rules()
        ),
        30,
        0.2,
        what="every rule evaluated without error",
    )

    # This run trips two alerts: the quarantine one at once, the pause one pending its 10 m.
    def alert_state(name: str) -> str | None:
        states = [
            a["state"] for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == name
        ]
        return states[0] if states else None

    wait_until(lambda: alert_state("BgsyncdQuarantineGrowing") == "firing", 30, 0.2)
    wait_until(lambda: alert_state("BgsyncdDispatchPaused") == "pending", 30, 0.2)

"""monitoring/: promtool judges the alert rules (and unit-tests them), the metrics
exposition and the dashboard's queries; the dashboard uses only contract metrics."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.support.prometheus import (
    CONTRACT,
    dashboard,
    expressions,
    panels,
)

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def test_dashboard_uses_only_contract_metrics(exposition: str) -> None:
    d = dashboard()
    used = {name for e in expressions(d) for name in re.findall(r"\bbgsyncd_[a-z_]+", e)}
    exposed = {
        line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line[:1].isalpha()
    }
    for name in used:
        assert name in exposed, f"dashboard uses {name}, which bgsyncd does not expose"
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in CONTRACT or base in CONTRACT, name
    # Everything the contract promises is on the dashboard.
    assert {re.sub(r"_(bucket|sum|count)$", "", n) for n in used} == set(CONTRACT)


def test_dashboard_has_the_panels_and_variables() -> None:
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["folder"]["type"] == "query"
    titles = {p["title"] for p in panels(d)}
    for wanted in (
        "Queue by state",
        "Files per minute against the limit",
        "API status codes",
        "API request latency",
        "Credits against the floor",
        "Credit expiry",
        "Dispatch pauses by reason",
        "Oldest pending age",
        "Quarantined per hour, by folder",
        "Inboxes up, by folder",
    ):
        assert wanted in titles
    for p in panels(d):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p.get("description"), p["title"]
    quarantine = next(p for p in panels(d) if p["title"].startswith("Quarantined"))
    assert "no reason label" in quarantine["description"]
    assert 'outcome="quarantined"' in quarantine["targets"][0]["expr"]
    assert any("$folder" in e for e in expressions(d))

"""monitoring/ for a fleet: the "fleet host missing" alert, unit-tested by promtool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.prometheus import RULES, fires, promtool, series, without_annotations

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")

FLEET_TESTS: list[dict[str, Any]] = [
    {  # three hosts, then one stops heartbeating: the two left report 2; fires after 5 m
        "interval": "1m",
        "input_series": [
            series("bgsyncd_fleet_hosts", "3x10 2x20", instance="a:9808"),
            series("bgsyncd_fleet_hosts", "3x10 2x20", instance="b:9808"),
            series("bgsyncd_fleet_hosts", "3x10 stale", instance="c:9808"),
        ],
        "alert_rule_test": [
            fires("BgsyncdFleetHostMissing", "8m"),  # all three there
            fires("BgsyncdFleetHostMissing", "13m"),  # one missing for 2 m: pending only
            fires(
                "BgsyncdFleetHostMissing",
                "20m",
                {"job": "bgsyncd", "severity": "warning"},
            ),
        ],
    },
    {  # a steady fleet, and a host joining: quiet
        "interval": "1m",
        "input_series": [
            series("bgsyncd_fleet_hosts", "2x10 3x20", instance="a:9808"),
            series("bgsyncd_fleet_hosts", "2x30", instance="b:9808"),
        ],
        "alert_rule_test": [
            fires("BgsyncdFleetHostMissing", "5m"),
            fires("BgsyncdFleetHostMissing", "25m"),
        ],
    },
]


def test_fleet_host_missing_fires_when_a_host_stops_and_not_when_one_joins(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "alerts.yml"
    rules.write_text(without_annotations(RULES.read_text(encoding="utf-8")), encoding="utf-8")
    tests = tmp_path / "tests.yml"
    tests.write_text(
        json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": FLEET_TESTS}),
        encoding="utf-8",
    )
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr

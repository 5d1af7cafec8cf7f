"""monitoring/: promtool judges the alert rules (and unit-tests them), the metrics
exposition and the dashboard's queries; the dashboard uses only contract metrics."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.prometheus import (
    INSTANCE,
    RULES,
    dashboard,
    expressions,
    fires,
    promtool,
    series,
    without_annotations,
)

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


ALERT_TESTS: list[dict[str, Any]] = [
    {  # paused: fires after 10 minutes; the no-success alert stays quiet meanwhile
        "interval": "1m",
        "input_series": [
            series("bgsyncd_dispatch_paused", "1x100", reason="credit_floor"),
            series("bgsyncd_dispatch_paused", "0x100", reason="invalid_api_key"),
            series("bgsyncd_jobs", "5x100", state="pending"),
            series("bgsyncd_last_success_timestamp_seconds", "0x100", folder="products"),
        ],
        "alert_rule_test": [
            fires("BgsyncdDispatchPaused", "5m"),
            fires(
                "BgsyncdDispatchPaused",
                "15m",
                {**INSTANCE, "reason": "credit_floor", "severity": "critical"},
            ),
            fires("BgsyncdNoRecentSuccess", "90m"),
        ],
    },
    {  # pending work, no success for an hour, not paused: fires; a fresh success: quiet
        # (promtool's clock starts at 0: "0 = never" is an hour old at 60m)
        "interval": "1m",
        "input_series": [
            series("bgsyncd_dispatch_paused", "0x100", reason="credit_floor"),
            series("bgsyncd_jobs", "5x100", state="pending"),
            series("bgsyncd_jobs", "0x100", state="in_flight"),
            series("bgsyncd_last_success_timestamp_seconds", "0x100", folder="products"),
            series(
                "bgsyncd_last_success_timestamp_seconds",
                "0+60x100",  # the series' own time: a success every minute
                folder="products",
                instance="busy:9808",
            ),
            series("bgsyncd_jobs", "5x100", state="pending", instance="busy:9808"),
            series("bgsyncd_dispatch_paused", "0x100", reason="credit_floor", instance="busy:9808"),
        ],
        "alert_rule_test": [
            fires("BgsyncdNoRecentSuccess", "70m"),
            fires("BgsyncdNoRecentSuccess", "80m", {**INSTANCE, "severity": "critical"}),
        ],
    },
    {  # oldest pending over an hour, for 5 minutes
        "interval": "1m",
        "input_series": [
            series("bgsyncd_oldest_pending_age_seconds", "3700+60x20"),
            series("bgsyncd_oldest_pending_age_seconds", "100x20", instance="ok:9808"),
        ],
        "alert_rule_test": [
            fires("BgsyncdOldestPendingTooOld", "2m"),
            fires("BgsyncdOldestPendingTooOld", "10m", {**INSTANCE, "severity": "warning"}),
        ],
    },
    {  # target down
        "interval": "1m",
        "input_series": [series("up", "0x20"), series("up", "1x20", instance="ok:9808")],
        "alert_rule_test": [fires("BgsyncdDown", "10m", {**INSTANCE, "severity": "critical"})],
    },
    {  # credits above the floor (50) less than a day's use (1440): warn; plenty: quiet
        "interval": "1m",
        "input_series": [
            series("bgsyncd_credits_available", "100x200"),
            series("bgsyncd_credits_floor", "50x200"),
            series("bgsyncd_jobs_finished_total", "0+1x200", folder="p", outcome="success"),
            series("bgsyncd_credits_available", "100000x200", instance="rich:9808"),
            series("bgsyncd_credits_floor", "50x200", instance="rich:9808"),
            series(
                "bgsyncd_jobs_finished_total",
                "0+1x200",
                folder="p",
                outcome="success",
                instance="rich:9808",
            ),
        ],
        "alert_rule_test": [
            fires("BgsyncdCreditsNearFloor", "20m"),
            fires("BgsyncdCreditsNearFloor", "3h", {**INSTANCE, "severity": "warning"}),
        ],
    },
    {  # credits that expire in three days
        "interval": "1m",
        "input_series": [
            series("bgsyncd_credits_expiry_timestamp_seconds", "259200x100"),
            series("bgsyncd_credits_available", "100x100"),
            series("bgsyncd_credits_floor", "0x100"),
        ],
        "alert_rule_test": [
            fires("BgsyncdCreditsExpiringSoon", "30m"),
            fires("BgsyncdCreditsExpiringSoon", "90m", {**INSTANCE, "severity": "warning"}),
        ],
    },
    {  # a quarantine in one folder; successes elsewhere do not count
        "interval": "1m",
        "input_series": [
            series(
                "bgsyncd_jobs_finished_total",
                "0 0 0 1 1 1 1 1 1 1",
                folder="products",
                outcome="quarantined",
            ),
            series("bgsyncd_jobs_finished_total", "0+1x9", folder="catalogue", outcome="success"),
            series("bgsyncd_jobs_finished_total", "0x9", folder="catalogue", outcome="quarantined"),
        ],
        "alert_rule_test": [
            fires("BgsyncdQuarantineGrowing", "1m"),
            fires(
                "BgsyncdQuarantineGrowing",
                "6m",
                {**INSTANCE, "folder": "products", "severity": "warning"},
            ),
        ],
    },
]


ALERT_TESTS.append(
    {  # an inbox lost for good fires after 2 minutes; a remount within a minute does not
        "interval": "1m",
        "input_series": [
            series("bgsyncd_folder_up", "1 1 0 0 0 0 0 0 0 0", folder="products"),
            series("bgsyncd_folder_up", "1x9", folder="catalogue"),
            series(
                "bgsyncd_folder_up", "1 1 0 1 1 1 1 1 1 1", folder="products", instance="b:9808"
            ),
        ],
        "alert_rule_test": [
            fires("BgsyncdFolderDown", "3m"),  # down for one minute: pending, not firing
            fires(
                "BgsyncdFolderDown",
                "5m",
                {**INSTANCE, "folder": "products", "severity": "critical"},
            ),
            fires(
                "BgsyncdFolderDown",
                "9m",
                {**INSTANCE, "folder": "products", "severity": "critical"},
            ),
        ],
    }
)


ALERT_TESTS.append(
    {  # a folder whose command hooks always fail; webhooks that fail now and then do not count
        "interval": "1m",
        "input_series": [
            series(
                "bgsyncd_hooks_total", "0+1x19", folder="products", kind="command", result="failed"
            ),
            series("bgsyncd_hooks_total", "0x19", folder="products", kind="command", result="ok"),
            series(
                "bgsyncd_hooks_total", "0+1x19", folder="products", kind="webhook", result="timeout"
            ),
            series("bgsyncd_hooks_total", "0+1x19", folder="products", kind="webhook", result="ok"),
        ],
        "alert_rule_test": [
            fires("BgsyncdHooksFailing", "5m"),  # pending for 10 minutes first
            fires(
                "BgsyncdHooksFailing",
                "15m",
                {**INSTANCE, "folder": "products", "kind": "command", "severity": "warning"},
            ),
        ],
    }
)


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    rules = tmp_path / "alerts.yml"
    rules.write_text(without_annotations(RULES.read_text(encoding="utf-8")), encoding="utf-8")
    assert "annotations" not in rules.read_text()
    tests = tmp_path / "tests.yml"
    # JSON is YAML: promtool reads it as is.
    tests.write_text(
        json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": ALERT_TESTS}),
        encoding="utf-8",
    )
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_exposition_passes_promtool_check_metrics(exposition: str) -> None:
    result = promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    substitutions = {
        "$__rate_interval": "5m",
        "$job": ".*",
        "$instance": ".*",
        "$folder": ".*",
        "$rate_limit": "7",
    }
    rules = []
    for i, query in enumerate(expressions(dashboard())):
        # Grafana's label_values(SELECTOR, label): check the selector.
        expr = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query)
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr

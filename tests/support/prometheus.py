"""promtool over monitoring/alerts.yml, the metrics contract the rules are checked against,
and the Grafana dashboard's panels and expressions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
INSTANCE = {"job": "bgsyncd", "instance": "host:9808"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, check=False, timeout=120
    )


def without_annotations(text: str) -> str:
    """The rules without their annotations, so unit tests compare labels only."""
    out: list[str] = []
    skip_deeper_than: int | None = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if line.strip() == "annotations:":
            skip_deeper_than = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {**INSTANCE, **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def fires(alert: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": labels} for labels in expected],
    }


# SPEC section 6, verbatim: name -> (type, label names).
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "bgsyncd_build_info": ("gauge", frozenset({"version"})),
    "bgsyncd_files_discovered_total": ("counter", frozenset({"folder"})),
    "bgsyncd_jobs": ("gauge", frozenset({"state"})),
    "bgsyncd_jobs_finished_total": ("counter", frozenset({"folder", "outcome"})),
    "bgsyncd_api_requests_total": ("counter", frozenset({"endpoint", "code"})),
    "bgsyncd_api_request_duration_seconds": ("histogram", frozenset({"endpoint"})),
    "bgsyncd_rate_limited_total": ("counter", frozenset()),
    "bgsyncd_credits_available": ("gauge", frozenset()),
    "bgsyncd_credits_floor": ("gauge", frozenset()),
    "bgsyncd_credits_expiry_timestamp_seconds": ("gauge", frozenset()),
    "bgsyncd_dispatch_paused": ("gauge", frozenset({"reason"})),
    "bgsyncd_dispatch_next_request_seconds": ("gauge", frozenset()),
    "bgsyncd_oldest_pending_age_seconds": ("gauge", frozenset()),
    "bgsyncd_job_duration_seconds": ("histogram", frozenset({"folder"})),
    "bgsyncd_last_success_timestamp_seconds": ("gauge", frozenset({"folder"})),
    "bgsyncd_resends_total": ("counter", frozenset()),
    "bgsyncd_folder_up": ("gauge", frozenset({"folder"})),
    "bgsyncd_upload_bytes_total": ("counter", frozenset({"endpoint"})),
    "bgsyncd_hooks_total": ("counter", frozenset({"folder", "kind", "result"})),
    "bgsyncd_hooks_pending": ("gauge", frozenset()),
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def expressions(d: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(d) for t in p.get("targets", [])]
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs

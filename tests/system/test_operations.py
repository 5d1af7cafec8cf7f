"""Operating it (SPEC §6): sd_notify, SIGHUP, the SIGTERM drain, the metrics
exposition and the key's secrecy, against real ``bgsyncd run`` subprocesses."""

from __future__ import annotations

import itertools
import math
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    free_port,
    make_folder,
    run_cli,
    start_daemon,
    status_json,
    write_config,
)
from tests.support.emulated import AdmittingEmulator
from tests.support.helpers import product_image, wait_until
from tests.support.systemd import FakeSystemd

IMAGE_PATH = "/v1.0/alpha-channel"  # upload = "proxy", the default, sends every input there


# -- helpers -------------------------------------------------------------------------


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as answer:  # loopback only
        return answer.status, answer.read().decode()


def drop(inbox: Path, name: str, size: int = 32) -> None:
    (inbox / name).write_bytes(product_image(size, size))


# -- 1. sd_notify --------------------------------------------------------------------


def notify_env(fake: FakeSystemd) -> dict[str, str]:
    return {"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "2000000"}


def test_notify_ready_after_scan_status_watchdog_and_stopping(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], fake_systemd: FakeSystemd
) -> None:
    folder = make_folder(tmp_path, "shop")
    inbox = Path(folder["inbox"])
    drop(inbox, "before-1.jpg", 30)
    drop(inbox, "before-2.jpg", 31)
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    d = DaemonProcess(config, env=notify_env(fake_systemd))
    daemons.append(d)
    wait_until(lambda: fake_systemd.values("READY"), 20, what="READY=1")
    # READY only once the start-up scan is done: its log line came first and saw both.
    ready_logs = [e for e in d.events() if e.get("event") == "daemon.ready"]
    assert [e["files_seen"] for e in ready_logs] == [2]
    logged = datetime.fromisoformat(ready_logs[0]["timestamp"].replace("Z", "+00:00"))
    assert logged.timestamp() <= fake_systemd.first_wall["READY"]
    assert fake_systemd.values("READY") == ["1"]
    wait_until(lambda: "2 done" in fake_systemd.values("STATUS"), 20, what="STATUS=2 done")
    # WATCHDOG_USEC=2 s: a ping every second, never a gap systemd would punish.
    ready_at = next(t for t, m in fake_systemd.messages() if "READY" in m)
    wait_until(
        lambda: sum(1 for t, m in fake_systemd.messages() if "WATCHDOG" in m and t > ready_at) >= 3,
        10,
        what="three watchdog pings",
    )
    pings = [t for t, m in fake_systemd.messages() if m.get("WATCHDOG") == "1"]
    first_three = [t for t in pings if t > ready_at][:3]
    assert first_three[2] - first_three[0] < 3.5, pings
    assert max(b - a for a, b in itertools.pairwise(pings)) < 2.0, pings
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.output()
    assert fake_systemd.values("STOPPING") == ["1"]
    extend = fake_systemd.values("EXTEND_TIMEOUT_USEC")
    assert len(extend) == 1 and int(extend[0]) >= 10_000_000  # at least the drain (10 s)
    stopping_at = next(i for i, (_, m) in enumerate(fake_systemd.messages()) if "STOPPING" in m)
    assert all("READY" not in m for _, m in fake_systemd.messages()[stopping_at:])


def test_notify_status_names_the_pause_reason(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    fake = FakeSystemd(str(tmp_path / "n.sock"))
    try:
        folder = make_folder(tmp_path, "shop")
        config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
        env = {**notify_env(fake), "BGSYNCD_API_KEY": "a-key-the-emulator-refuses"}
        d = start_daemon(daemons, config, env=env)
        wait_until(
            lambda: any("invalid_api_key" in s for s in fake.values("STATUS")),
            15,
            what="STATUS with the pause reason",
        )
        assert status_json(config)["paused"] == "invalid_api_key"
        assert d.stop() == 0
    finally:
        fake.close()


# -- 2. SIGHUP -----------------------------------------------------------------------


def test_sighup_adds_a_folder_live_and_survives_a_broken_config(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    a = make_folder(tmp_path, "alpha")
    b = make_folder(tmp_path, "beta")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[a])
    d = start_daemon(daemons, config)
    in_a, out_a = Path(a["inbox"]), Path(a["outbox"])
    in_b, out_b = Path(b["inbox"]), Path(b["outbox"])
    drop(in_a, "a1.jpg")
    wait_until((out_a / "a1.png").exists, 20, what="a1.png")

    write_config(config, base_url=emulator.url, folders=[a, b])
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.saw("config.reloaded"), 20, what="config.reloaded")
    reloaded = [e for e in d.events() if e.get("event") == "config.reloaded"]
    assert reloaded[0]["folders"] == ["alpha", "beta"]
    drop(in_b, "b1.jpg")
    drop(in_a, "a2.jpg")
    wait_until(
        lambda: (out_b / "b1.png").exists() and (out_a / "a2.png").exists(), 20, what="b1, a2"
    )

    config.write_text("[api\nthis is not TOML\n", encoding="utf-8")
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.saw("config.reload_failed"), 20, what="config.reload_failed")
    assert d.proc.poll() is None, d.output()
    drop(in_b, "b2.jpg")
    drop(in_a, "a3.jpg")
    wait_until(
        lambda: (out_b / "b2.png").exists() and (out_a / "a3.png").exists(), 20, what="b2, a3"
    )
    assert len([e for e in d.events() if e.get("event") == "config.reloaded"]) == 1
    assert d.stop() == 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sighup_removing_a_folder_keeps_its_jobs_and_does_not_spin(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=0, rate_limit=1000) as emu:
        a = make_folder(tmp_path, "alpha")
        b = make_folder(tmp_path, "beta")
        config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[a, b])
        d = start_daemon(daemons, config)
        wait_until(lambda: status_json(config)["paused"] == "credit_floor", 20, what="pause")
        drop(Path(b["inbox"]), "b1.jpg")
        drop(Path(a["inbox"]), "a1.jpg")
        wait_until(lambda: status_json(config)["jobs"]["pending"] == 2, 20, what="2 pending")

        write_config(config, base_url=emu.url, folders=[a])  # beta removed
        emu.configure(credits=100)
        d.signal(signal.SIGHUP)
        wait_until((Path(a["outbox"]) / "a1.png").exists, 20, what="a1.png")
        before, t0 = cpu_seconds(d.proc.pid), time.monotonic()
        wait_until(lambda: time.monotonic() - t0 > 2.0, 5, what="two seconds")
        busy = (cpu_seconds(d.proc.pid) - before) / (time.monotonic() - t0)
        assert busy < 0.5, f"the daemon spins at {busy:.0%} of a core over a removed folder"
        status = status_json(config)
        assert status["folders"]["beta"]["pending"] == 1  # kept for a later configuration
        assert not (Path(b["outbox"]) / "b1.png").exists()
        assert d.stop() == 0


# -- 3. SIGTERM drain ----------------------------------------------------------------


@pytest.fixture
def slow_emulator() -> Iterator[AdmittingEmulator]:
    emu = AdmittingEmulator(keys=["test-key-0123456789"], credits=10_000, rate_limit=1000, seed=3)
    with emu:
        yield emu


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(
    tmp_path: Path, slow_emulator: AdmittingEmulator, daemons: list[DaemonProcess]
) -> None:
    emu = slow_emulator
    folder = make_folder(tmp_path, "drain")
    config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
    d = start_daemon(daemons, config)
    wait_until(lambda: d.saw("credits.checked"), 20, what="first credit check")
    emu.configure(latency=2.0)
    drop(Path(folder["inbox"]), "slow.jpg")
    assert emu.image_admitted.wait(20), d.output()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.output()
    # The exit came after the answer: the output is there and the job is done.
    assert (Path(folder["outbox"]) / "slow.png").exists()
    assert [(r.path, r.status) for r in emu.requests() if r.path == IMAGE_PATH] == [
        (IMAGE_PATH, 200)
    ]
    stopping = [e for e in d.events() if e.get("event") == "daemon.stopping"]
    assert [e["in_flight"] for e in stopping] == [1]
    assert d.saw("daemon.stopped")
    assert status_json(config)["jobs"]["done"] == 1
    assert status_json(config)["jobs"]["in_flight"] == 0


def test_second_sigterm_exits_at_once_and_the_job_is_sent_again(
    tmp_path: Path, slow_emulator: AdmittingEmulator, daemons: list[DaemonProcess]
) -> None:
    emu = slow_emulator
    folder = make_folder(tmp_path, "hurry")
    config = write_config(tmp_path / "c.toml", base_url=emu.url, folders=[folder])
    d = start_daemon(daemons, config)
    wait_until(lambda: d.saw("credits.checked"), 20, what="first credit check")
    emu.configure(latency=8.0)  # a drain would take this long; the client waits 10 s
    drop(Path(folder["inbox"]), "stuck.jpg")
    assert emu.image_admitted.wait(20), d.output()
    d.signal(signal.SIGTERM)
    wait_until(lambda: d.saw("daemon.stopping"), 10, what="daemon.stopping")
    begun = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.proc.wait(30)
    assert time.monotonic() - begun < 4.0, "the second SIGTERM did not exit at once"
    assert code != 0
    assert not (Path(folder["outbox"]) / "stuck.png").exists()
    assert status_json(config)["jobs"]["in_flight"] == 1

    emu.configure(latency=0.0)
    again = start_daemon(daemons, config)
    wait_until((Path(folder["outbox"]) / "stuck.png").exists, 20, what="stuck.png after restart")
    assert again.saw("job.resend", path="stuck.jpg")
    wait_until(lambda: status_json(config)["jobs"]["done"] == 1, 10, what="done after restart")
    assert again.stop() == 0


# -- 4. the metrics exposition -------------------------------------------------------

CONTRACT: dict[str, tuple[str, set[str]]] = {
    "bgsyncd_build_info": ("gauge", {"version"}),
    "bgsyncd_files_discovered": ("counter", {"folder"}),
    "bgsyncd_jobs": ("gauge", {"state"}),
    "bgsyncd_jobs_finished": ("counter", {"folder", "outcome"}),
    "bgsyncd_api_requests": ("counter", {"endpoint", "code"}),
    "bgsyncd_api_request_duration_seconds": ("histogram", {"endpoint"}),
    "bgsyncd_rate_limited": ("counter", set()),
    "bgsyncd_credits_available": ("gauge", set()),
    "bgsyncd_credits_floor": ("gauge", set()),
    "bgsyncd_credits_expiry_timestamp_seconds": ("gauge", set()),
    "bgsyncd_dispatch_paused": ("gauge", {"reason"}),
    "bgsyncd_dispatch_next_request_seconds": ("gauge", set()),
    "bgsyncd_oldest_pending_age_seconds": ("gauge", set()),
    "bgsyncd_job_duration_seconds": ("histogram", {"folder"}),
    "bgsyncd_last_success_timestamp_seconds": ("gauge", {"folder"}),
    "bgsyncd_resends": ("counter", set()),
    "bgsyncd_folder_up": ("gauge", {"folder"}),
    "bgsyncd_upload_bytes": ("counter", {"endpoint"}),
    "bgsyncd_hooks": ("counter", {"folder", "kind", "result"}),
    "bgsyncd_hooks_pending": ("gauge", set()),
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def test_live_exposition_carries_every_contract_metric(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    port = free_port()
    folder = make_folder(tmp_path, "shop")
    config = write_config(
        tmp_path / "c.toml",
        base_url=emulator.url,
        folders=[folder],
        metrics_listen=f"127.0.0.1:{port}",
        credits={"floor": 5},
    )
    start_daemon(daemons, config)
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    drop(inbox, "first.jpg", 30)
    drop(inbox, "second.jpg", 31)
    wait_until(
        lambda: (outbox / "first.png").exists() and (outbox / "second.png").exists(),
        20,
        what="both outputs",
    )
    url = f"http://127.0.0.1:{port}"

    def scrape_once_refreshed() -> str | None:
        text = fetch(url + "/metrics")[1]
        return text if value(text, "bgsyncd_jobs", state="done") == 2 else None

    # The jobs gauge follows the main loop's refresh (every few seconds).
    text = wait_until(scrape_once_refreshed, 20, what="jobs{state=done} == 2")
    assert text is not None
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in CONTRACT.items():
        assert name in families, name
        assert families[name].type == kind, name
        seen = {k for s in families[name].samples for k in s.labels if k not in ("le",)}
        assert seen == labels, name
    assert set(families) == set(CONTRACT), "no series beyond the contract"

    assert value(text, "bgsyncd_files_discovered_total", folder="shop") == 2
    assert value(text, "bgsyncd_folder_up", folder="shop") == 1
    assert value(text, "bgsyncd_jobs_finished_total", folder="shop", outcome="success") == 2
    assert value(text, "bgsyncd_jobs_finished_total", folder="shop", outcome="quarantined") == 0
    assert value(text, "bgsyncd_api_requests_total", endpoint="alpha-channel", code="200") == 2
    assert value(text, "bgsyncd_api_requests_total", endpoint="available-credit", code="200") >= 1
    assert value(text, "bgsyncd_job_duration_seconds_count", folder="shop") == 2
    # The last known count: what the daemon counted down from its check, as status says.
    assert status_json(config)["credits"] == emulator.credits
    assert wait_until(
        lambda: value(fetch(url + "/metrics")[1], "bgsyncd_credits_available") == emulator.credits,
        10,
        what="credits_available == the local count",
    )
    assert value(text, "bgsyncd_credits_floor") == 5
    assert not math.isnan(value(text, "bgsyncd_credits_expiry_timestamp_seconds"))
    assert value(text, "bgsyncd_last_success_timestamp_seconds", folder="shop") > time.time() - 60
    assert value(text, "bgsyncd_dispatch_paused", reason="invalid_api_key") == 0
    assert value(text, "bgsyncd_build_info", version=_version()) == 1
    assert value(text, "bgsyncd_resends_total") == 0
    assert value(text, "bgsyncd_rate_limited_total") == 0
    for metric, label_pairs in set(samples(text)):
        for _, label_value in label_pairs:
            assert "/" not in label_value and ".jpg" not in label_value, (metric, label_value)
            assert str(tmp_path) not in label_value
    assert "test-key-0123456789" not in text
    assert fetch(url + "/healthz") == (200, "ok\n")

    promtool = shutil.which("promtool")
    if promtool is None:  # pragma: no cover - CI installs it
        pytest.skip("promtool is not installed")
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def _version() -> str:
    from bgsyncd import __version__

    return __version__


# -- 5. the key never leaks ----------------------------------------------------------


def test_the_key_appears_nowhere(tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    token = secrets.token_hex(12)
    key = f"sk-live-SECRET-{token}"
    env = {"BGSYNCD_API_KEY": key}
    with Emulator(keys=[key], credits=1000, rate_limit=1000, seed=4) as emu:
        port = free_port()
        folder = make_folder(tmp_path, "keys")
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            metrics_listen=f"127.0.0.1:{port}",
        )
        printed = []
        checked = run_cli("check-config", "--config", str(config), env=env)
        assert checked.returncode == 0, checked.stderr
        printed.append(checked.stdout + checked.stderr)
        d = start_daemon(daemons, config, env=env)
        inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
        drop(inbox, "good.jpg")
        (inbox / "text.jpg").write_bytes(b"not an image at all\n")
        quarantine = Path(folder["quarantine"])
        wait_until(
            lambda: (
                (outbox / "good.png").exists() and (quarantine / "text.jpg.error.json").exists()
            ),
            20,
            what="output and sidecar",
        )
        # The account refuses the key: an image request answered 401 pauses dispatch.
        emu.configure(keys=["somebody-else"])
        drop(inbox, "refused.jpg", 33)
        wait_until(
            lambda: d.saw("dispatch.paused", reason="invalid_api_key"), 20, what="paused 401"
        )
        assert any(r.status == 401 and r.path == IMAGE_PATH for r in emu.requests())
        printed.append(fetch(f"http://127.0.0.1:{port}/metrics")[1])
        emu.configure(keys=[key])
        d.signal(signal.SIGHUP)
        wait_until((outbox / "refused.png").exists, 20, what="refused.png after reload")
        printed.append(fetch(f"http://127.0.0.1:{port}/metrics")[1])
        cmdline = Path(f"/proc/{d.proc.pid}/cmdline").read_bytes()
        for args in (("status",), ("status", "--json"), ("check-config",)):
            result = run_cli(*args, "--config", str(config), env=env)
            assert result.returncode == 0, result.stderr
            printed.append(result.stdout + result.stderr)
        assert d.stop() == 0
    assert d.saw("dispatch.resumed")
    assert len(d.events()) > 10
    for secret in (key, token):
        assert secret.encode() not in cmdline
        for text in printed:
            assert secret not in text
        # every log line, sidecar, database page, cached result and output
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path

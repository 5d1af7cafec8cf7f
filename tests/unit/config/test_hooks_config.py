"""The [hooks] section and the folders' hook keys: the webhook rules, the secret kept secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bgsyncd.config.loading import render_settings
from bgsyncd.errors import ConfigError
from bgsyncd.service.backends import load_settings


def _config(tmp_path: Path, webhook: str, hooks: str = "") -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "c.toml"
    path.write_text(
        f"[hooks]\n{hooks}\n[[folder]]\ninbox = 'in'\noutbox = 'out'\nquarantine = 'q'\n"
        f"webhook = {webhook!r}\non_done = ['/bin/true', '$(x)']\n",
        encoding="utf-8",
    )
    return path


def test_an_http_webhook_to_another_host_without_a_secret_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"folder\[0\]\.webhook.*secret"):
        load_settings(_config(tmp_path, "http://shop.example/hook"))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/h", "http://localhost/h", "http://[::1]/h", "https://a.example/"]
)
def test_loopback_or_https_needs_no_secret(tmp_path: Path, url: str) -> None:
    s = load_settings(_config(tmp_path, url))
    assert s.folders[0].webhook == url and s.webhook_secret is None
    assert s.folders[0].on_done == ("/bin/true", "$(x)")


def test_a_secret_allows_http_and_is_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("very-secret-value\n")
    os.chmod(secret, 0o600)
    s = load_settings(_config(tmp_path, "http://shop.example/h", f"secret_file = '{secret}'"))
    assert s.webhook_secret is not None
    assert s.webhook_secret.get_secret_value() == "very-secret-value"
    shown = render_settings(s) + repr(s) + str(s.model_dump())
    assert "very-secret-value" not in shown
    assert "webhook secret: ********" in render_settings(s)


def test_the_credential_webhook_secret_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "webhook_secret").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(_config(tmp_path, "http://shop.example/h"))
    assert s.webhook_secret is not None
    assert s.webhook_secret_source == "$CREDENTIALS_DIRECTORY/webhook_secret"


def test_the_hooks_section_has_the_spec_defaults_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(_config(tmp_path, ""))
    assert (s.hooks.timeout_seconds, s.hooks.max_running, s.hooks.max_attempts) == (60, 2, 5)
    assert s.hooks.secret_file == ""
    monkeypatch.setenv("BGSYNCD_HOOKS__MAX_RUNNING", "4")
    assert load_settings(_config(tmp_path, "")).hooks.max_running == 4


@pytest.mark.parametrize(
    "url",
    ["http://localhost:808O/hook", "http://localhost:99999/", "https://xn--/",
     "https://" + "a" * 300 + ".com/", "https://a b.example/", "http://127.0.0.1/\r\nX: y",
     "https://a..b/", "https://a\x00b/"],
)  # fmt: skip
def test_a_webhook_url_that_cannot_be_called_is_refused_at_load(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"folder\[0\]\.webhook"):
        load_settings(_config(tmp_path, url))


@pytest.mark.parametrize("key", ["on_done", "on_quarantine"])
def test_a_nul_in_a_command_is_refused_at_load_naming_the_key(tmp_path: Path, key: str) -> None:
    (tmp_path / "in").mkdir()
    path = tmp_path / "c.toml"
    path.write_text(
        "[[folder]]\ninbox = 'in'\noutbox = 'out'\nquarantine = 'q'\n"
        f'{key} = ["/bin/echo", "a\\u0000b"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=rf"folder\[0\]\.{key}.*NUL"):
        load_settings(path)

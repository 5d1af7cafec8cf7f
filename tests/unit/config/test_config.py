"""Configuration: the schema, environment overrides, the folder rules and the API key.

``load_settings`` on real files in ``tmp_path``; ``bgsyncd check-config`` as a
real subprocess for the end-to-end promise (exit 2, the key named, no traceback).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from bgsyncd.config.loading import config_path, render_settings, require_api_key
from bgsyncd.config.rules import parse_listen
from bgsyncd.config.schema import (
    DEFAULT_CONFIG_PATH,
    ApiSettings,
    CreditSettings,
    FolderSettings,
    LoggingSettings,
    MetricsSettings,
    QueueSettings,
    RenditionSettings,
    Settings,
)
from bgsyncd.errors import ConfigError
from bgsyncd.service.backends import load_settings
from tests.support.configs import FOLDER, SECRET
from tests.support.paths import ROOT

# No BGSYNCD_* variable of the runner's leaks into any test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("clean_env")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load(path: Path, text: str, **kw: bool) -> Settings:
    path.write_text(text, encoding="utf-8")
    return load_settings(path, **kw)


def error(path: Path, text: str) -> str:
    """The ConfigError message for ``text``, checked to be one line naming the file."""
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, create_folders=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --- defaults, the example file, paths -----------------------------------------


def test_an_empty_file_gives_the_spec_defaults_and_no_folders(cfg: Path) -> None:
    s = load(cfg, "")
    assert s.api.base_url == "https://api.withoutbg.com"
    assert (s.api.rate_limit, s.api.rate_window_seconds, s.api.max_in_flight) == (7, 60, 3)
    assert (s.api.timeout_seconds, s.api.max_upload_bytes) == (120, 10485760)
    assert (s.credits.floor, s.credits.check_interval_seconds) == (0, 600)
    assert s.queue.database == Path("/var/lib/bgsyncd/queue.sqlite3")
    assert (s.queue.max_attempts, s.queue.settle_seconds) == (5, 2.0)
    assert (s.queue.rescan_interval_seconds, s.queue.cache_max_megabytes) == (300, 512)
    assert (s.queue.retry_base_seconds, s.queue.retry_max_seconds) == (2.0, 300)
    assert s.metrics.listen == "127.0.0.1:9808"
    assert (s.logging.format, s.logging.level) == ("json", "info")
    assert s.folders == ()  # allowed here; the daemon refuses to run without folders
    assert s.config_path == cfg and s.api_key is None and s.warnings == ()


def example_in(tmp_path: Path) -> Path:
    """config.example.toml with its /srv/bgsyncd and /var/lib paths moved under tmp_path."""
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    assert "/srv/bgsyncd/" in text
    text = text.replace("/srv/bgsyncd/", f"{tmp_path}/bg/").replace("/var/lib/", f"{tmp_path}/lib/")
    (tmp_path / "bg" / "inbox").mkdir(parents=True)
    path = tmp_path / "example.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_file_loads_and_states_every_default(tmp_path: Path) -> None:
    s = load_settings(example_in(tmp_path))
    assert s.api == ApiSettings() and s.credits == CreditSettings()
    assert s.queue == QueueSettings(database=tmp_path / "lib/bgsyncd/queue.sqlite3")
    assert s.metrics == MetricsSettings() and s.logging == LoggingSettings()
    (folder,) = s.folders
    assert folder.name == "products" and folder.inbox == tmp_path / "bg/inbox"
    paths = {"inbox", "outbox", "quarantine", "name"}
    defaults = FolderSettings(inbox=Path("i"), outbox=Path("o"), quarantine=Path("q"))
    assert folder.model_dump(exclude=paths) == defaults.model_dump(exclude=paths)
    assert (tmp_path / "bg/outbox").is_dir() and (tmp_path / "bg/quarantine").is_dir()


def test_the_example_file_names_every_setting() -> None:
    raw = tomllib.loads((ROOT / "config.example.toml").read_text(encoding="utf-8"))
    models: dict[str, type[BaseModel]] = {
        "api": ApiSettings,
        "credits": CreditSettings,
        "queue": QueueSettings,
        "metrics": MetricsSettings,
        "logging": LoggingSettings,
    }
    for section, model in models.items():
        assert set(raw[section]) == set(model.model_fields), section
    # Renditions are shown commented out (the example has none), with every key named.
    assert set(raw["folder"][0]) == set(FolderSettings.model_fields) - {"rendition"}
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    shown = text[text.index("# [[folder.rendition]]") :]
    for key in RenditionSettings.model_fields:
        assert key in shown, key


def test_relative_paths_are_relative_to_the_config_file(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)
    s = load(cfg, f'[api]\nkey_file = "key"\n[queue]\ndatabase = "state/q.db"\n{FOLDER}')
    assert s.queue.database == tmp_path / "state/q.db"
    f = s.folders[0]
    assert (f.inbox, f.outbox, f.quarantine) == (tmp_path / "in", tmp_path / "out", tmp_path / "q")
    assert f.name == "in"  # the default: the inbox's last component
    assert require_api_key(s) == SECRET


def test_relative_paths_from_the_environment_are_relative_to_the_working_directory(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a shell user means them; the file's own relative paths keep the file's folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (elsewhere / "key").write_text(SECRET)
    (elsewhere / "key").chmod(0o600)
    monkeypatch.setenv("BGSYNCD_QUEUE__DATABASE", "rel/q.sqlite3")
    monkeypatch.setenv("BGSYNCD_API__KEY_FILE", "key")
    s = load(cfg, FOLDER)
    assert s.queue.database == elsewhere / "rel/q.sqlite3"
    assert s.api.key_file == str(elsewhere / "key")
    assert require_api_key(s) == SECRET
    monkeypatch.setenv("BGSYNCD_QUEUE__DATABASE", "~/q.sqlite3")
    assert load(cfg, FOLDER).queue.database == Path.home() / "q.sqlite3"


def test_folders_are_created_only_when_asked(cfg: Path, tmp_path: Path) -> None:
    text = FOLDER.replace('"out"', '"deep/er/out"') + 'after_success = "move"\ndone = "done"\n'
    load(cfg, text, create_folders=False)
    assert not (tmp_path / "deep").exists() and not (tmp_path / "done").exists()
    load(cfg, text)
    assert (tmp_path / "deep/er/out").is_dir() and (tmp_path / "done").is_dir()
    assert (tmp_path / "q").is_dir()


def test_a_folder_that_cannot_be_created_is_a_clear_error(cfg: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cfg.write_text(FOLDER.replace('"q"', '"afile/q"'))
    with pytest.raises(ConfigError, match=r"folder\[0\]\.quarantine: cannot create .*afile/q"):
        load_settings(cfg)
    assert "folder[0].outbox: " in error(cfg, FOLDER.replace('"out"', '"afile"'))


def test_settings_are_frozen(cfg: Path) -> None:
    s = load(cfg, FOLDER)
    with pytest.raises(ValidationError):
        s.api.rate_limit = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.folders[0].format = "webp"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.credits = CreditSettings()  # type: ignore[misc]


def test_config_path_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path("a.toml", {"BGSYNCD_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path(None, {"BGSYNCD_CONFIG": "b.toml"}) == Path("b.toml")
    assert config_path(None, {}) == DEFAULT_CONFIG_PATH
    monkeypatch.setenv("BGSYNCD_CONFIG", "c.toml")
    assert config_path(None) == Path("c.toml")


# --- the environment ----------------------------------------------------------


def test_the_environment_overrides_the_file_key_by_key(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSYNCD_API__RATE_LIMIT", "5")
    monkeypatch.setenv("bgsyncd_logging__level", "debug")  # names are case-insensitive
    s = load(cfg, "[api]\nrate_limit = 9\ntimeout_seconds = 30\n")
    assert (s.api.rate_limit, s.api.timeout_seconds, s.logging.level) == (5, 30, "debug")


def test_a_wrong_type_from_the_environment_names_the_variable(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSYNCD_API__RATE_LIMIT", "fast")
    message = error(cfg, "")
    assert "api.rate_limit (from BGSYNCD_API__RATE_LIMIT)" in message and "'fast'" in message


def test_an_unknown_key_from_the_environment_is_refused(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSYNCD_QUEUE__MAX_ATTEMPT", "3")
    message = error(cfg, "")
    assert "queue.max_attempt (from BGSYNCD_QUEUE__MAX_ATTEMPT): unknown key" in message
    assert "did you mean max_attempts?" in message


def test_a_whole_section_from_the_environment_must_be_json(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSYNCD_API", "rate_limit=5")
    assert "api (from BGSYNCD_API): not a JSON object" in error(cfg, "")


def test_only_sections_come_from_the_environment(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSYNCD_FOLDER", "not json")
    monkeypatch.setenv("BGSYNCD_FOLDER__0__INBOX", str(tmp_path))
    monkeypatch.setenv("BGSYNCD_WARNINGS", '["planted"]')
    monkeypatch.setenv("BGSYNCD_CONFIG_PATH", "/elsewhere")
    monkeypatch.setenv("BGSYNCD_API_KEY_SOURCE", "planted")
    s = load(cfg, FOLDER)
    assert s.folders[0].inbox == tmp_path / "in"
    assert s.warnings == () and s.config_path == cfg and s.api_key_source == ""


# --- what the file may not say ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[api]\nrate_limt = 5\n", "api.rate_limt: unknown key (did you mean rate_limit?)"),
        ("apii = 1\n", "apii: unknown key (did you mean api?)"),
        ('_env_prefix = "X_"\n', "_env_prefix: unknown key"),
        ('config_path = "/x"\n', "config_path: unknown key"),
        (FOLDER + 'colour = "#fff"\n', "folder[0].colour: unknown key"),
        ('[api]\nrate_limit = "fast"\n', "api.rate_limit: Input should be a valid integer"),
        ("[api]\nrate_limit = 0\n", "api.rate_limit: Input should be greater than 0"),
        ("[api]\ntimeout_seconds = inf\n", "api.timeout_seconds: Input should be a finite"),
        ('[api]\nbase_url = "api.withoutbg.com"\n', "api.base_url: must start with http"),
        ("[credits]\nfloor = -1\n", "credits.floor: Input should be greater than or equal to 0"),
        ('[logging]\nformat = "xml"\n', "logging.format: Input should be 'json' or 'console'"),
        ("api = 5\n", "api: expected a [api] table"),
        (FOLDER + 'format = "gif"\n', "folder[0].format: Input should be 'png', 'webp' or 'jpeg'"),
        (FOLDER + "recursive = 3\n", "folder[0].recursive: Input should be a valid boolean"),
        (FOLDER + 'ignore = "*.x"\n', "folder[0].ignore: Input should be a valid tuple"),
        (FOLDER + 'format = "jpeg"\n', 'folder[0].background: format = "jpeg" needs a backgr'),
        (FOLDER + 'background = "red"\n', 'folder[0].background: expected "" or "#rrggbb"'),
        (FOLDER + 'after_success = "move"\n', 'folder[0].done: after_success = "move" needs'),
        (FOLDER + 'after_success = "move"\ndone = ""\n', "folder[0].done: after_success"),
        (FOLDER.replace('"out"', '""'), "folder[0].outbox: must not be empty"),
        ('[[folder]]\noutbox = "o"\nquarantine = "q"\n', "folder[0].inbox: missing"),
        (FOLDER.replace('"in"', '"nowhere"'), "folder[0].inbox: "),
        ('[folder]\ninbox = "in"\n', "folder: write each folder as a [[folder]] table"),
        ("folder = [5]\n", "folder[0]: expected a [[folder]] table"),
    ],
)
def test_a_bad_file_is_one_message_naming_the_key(cfg: Path, text: str, expected: str) -> None:
    assert expected in error(cfg, text)


@pytest.mark.parametrize(
    "listen",
    ["localhost", "host:http", "host:70000", "::1:9808", "a b:1", "host:٣"],
)
def test_a_bad_metrics_listen_is_refused(cfg: Path, listen: str) -> None:
    assert "metrics.listen: " in error(cfg, f'[metrics]\nlisten = "{listen}"\n')


def test_parse_listen() -> None:
    assert parse_listen("") is None
    assert parse_listen("127.0.0.1:9808") == ("127.0.0.1", 9808)
    assert parse_listen(":9808") == ("0.0.0.0", 9808)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(" localhost:80 ") == ("localhost", 80)
    with pytest.raises(ValueError, match="brackets"):
        parse_listen("::1:80")


def test_broken_or_unreadable_files_are_clear_errors(cfg: Path, tmp_path: Path) -> None:
    assert "not valid TOML" in error(cfg, "[api\nrate_limit = 5\n")
    assert "line 2" in error(cfg, "[api]\nrate_limit = = 5\n")
    cfg.write_bytes(b'[api]\nbase_url = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="no configuration file"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path)


@pytest.mark.parametrize(
    ("folders", "expected"),
    [
        ('inbox = "in"\noutbox = "in/out"\nquarantine = "q"', r"folder\[0\]\.outbox: .* is inside"),
        ('inbox = "in"\noutbox = "out"\nquarantine = "."', r"folder\[0\]\.quarantine: .* contains"),
        ('inbox = "in"\noutbox = "in"\nquarantine = "q"', r"folder\[0\]\.outbox: .* is folder"),
        (
            'inbox = "in"\noutbox = "out"\nquarantine = "out"',
            r"folder\[0\]\.quarantine: .* collide",
        ),
        (
            'inbox = "in"\noutbox = "out"\nquarantine = "q"\n[[folder]]\n'
            'inbox = "in2"\noutbox = "in/x"\nquarantine = "q2"',
            r"folder\[1\].outbox: .* inside folder\[0\].inbox",
        ),
        (
            'inbox = "in"\noutbox = "out"\nquarantine = "q"\n[[folder]]\n'
            'inbox = "in/sub"\noutbox = "out2"\nquarantine = "q2"\nname = "sub2"',
            r"folder\[1\].inbox: .* inside folder\[0\].inbox",
        ),
        (
            'inbox = "in"\noutbox = "out"\nquarantine = "q"\n[[folder]]\n'
            'inbox = "in2"\noutbox = "out/2"\nquarantine = "q2"',
            r"folder\[1\].outbox: .* inside folder\[0\].outbox",
        ),
        (
            'inbox = "in"\noutbox = "out"\nquarantine = "q"\n[[folder]]\n'
            'inbox = "in2"\noutbox = "o2"\nquarantine = "q2"\nname = "in"',
            r"folder\[1\].name: folder\[0\] already has the name 'in'",
        ),
    ],
)
def test_folders_must_not_overlap(cfg: Path, folders: str, expected: str) -> None:
    (cfg.parent / "in" / "sub").mkdir()
    (cfg.parent / "in2").mkdir()
    assert re.search(expected, error(cfg, f"[[folder]]\n{folders}\n"))


def test_folders_may_share_a_quarantine(cfg: Path) -> None:
    (cfg.parent / "in2").mkdir()
    s = load(cfg, FOLDER + '[[folder]]\ninbox = "in2"\noutbox = "out2"\nquarantine = "q"\n')
    assert [f.name for f in s.folders] == ["in", "in2"]


# --- the API key --------------------------------------------------------------


def test_the_key_comes_from_the_environment_first(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key").write_text("sk-from-file\n")
    (tmp_path / "key").chmod(0o600)
    monkeypatch.setenv("BGSYNCD_API_KEY", SECRET)
    s = load(cfg, '[api]\nkey_file = "key"\n')
    assert require_api_key(s) == SECRET and s.api_key_source == "BGSYNCD_API_KEY"
    monkeypatch.delenv("BGSYNCD_API_KEY")
    s = load(cfg, '[api]\nkey_file = "key"\n')
    assert require_api_key(s) == "sk-from-file" and s.api_key_source == "api.key_file"
    assert s.warnings == ()


def test_a_key_file_others_can_read_gets_a_warning(cfg: Path, tmp_path: Path) -> None:
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o640)
    s = load(cfg, '[api]\nkey_file = "key"\n')
    (warning,) = s.warnings
    assert "api.key_file" in warning and "0640" in warning and SECRET not in warning
    assert "warning: api.key_file" in render_settings(s)


def test_the_systemd_credential_comes_last(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load(cfg, "").api_key is None  # no api_key credential: no key, no error
    (creds / "api_key").write_text(SECRET + "\n")
    (creds / "api_key").chmod(0o400)
    s = load(cfg, "")
    assert require_api_key(s) == SECRET
    assert s.api_key_source == "$CREDENTIALS_DIRECTORY/api_key"


def test_no_key_is_an_error_only_when_one_is_needed(cfg: Path) -> None:
    s = load(cfg, "")
    with pytest.raises(ConfigError, match="BGSYNCD_API_KEY"):
        require_api_key(s)
    assert "api key: not set" in render_settings(s)


def test_a_missing_key_file_names_the_key_and_the_config_file(cfg: Path) -> None:
    message = error(cfg, '[api]\nkey_file = "nokey"\n')
    assert "api.key_file: " in message and "nokey does not exist" in message


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n  \n",
        f"{SECRET}\n# my comment {SECRET}\n".encode(),
        f"KEY = {SECRET}".encode(),
        b"\xff\xfe" + SECRET.encode(),
        f"{SECRET}\u00e9".encode(),
        SECRET.encode() * 1000,
    ],
)
def test_a_weird_key_file_is_refused_without_showing_it(
    cfg: Path, tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "key").write_bytes(content)
    message = error(cfg, '[api]\nkey_file = "key"\n')
    assert "api.key_file: " in message and SECRET not in message


def test_a_key_file_that_is_not_a_file_is_refused(cfg: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # reading it would block forever
    assert "is not a regular file" in error(cfg, '[api]\nkey_file = "fifo"\n')


def test_a_weird_key_in_the_environment_is_refused_without_showing_it(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSYNCD_API_KEY", f"{SECRET} extra")
    cfg.write_text("")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "BGSYNCD_API_KEY" in str(info.value) and SECRET not in str(info.value)


def test_the_key_in_the_config_file_is_refused_without_showing_it(cfg: Path) -> None:
    for text in (f'[api]\nkey = "{SECRET}"\n', f'api_key = "{SECRET}"\n'):
        message = error(cfg, text)
        assert "does not belong in the configuration file" in message
        assert SECRET not in message
    assert SECRET not in error(cfg, f"[api]\nkey = {SECRET}\n")  # not even as broken TOML


def test_the_key_never_shows_in_the_settings_or_their_rendering(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSYNCD_API_KEY", SECRET)
    s = load(cfg, FOLDER)
    for text in (render_settings(s), repr(s), str(s), s.model_dump_json()):
        assert SECRET not in text
    assert "********" in render_settings(s)


def test_the_rendering_is_toml_that_loads_to_the_same_settings(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGSYNCD_API__RATE_LIMIT", "5")
    text = FOLDER + 'ignore = ["*.x", "a\\"b"]\nbackground = "#00ff00"\nformat = "jpeg"\n'
    first = load(cfg, text)
    rendered = render_settings(first)
    assert "rate_limit = 5" in rendered
    again = tmp_path / "again.toml"
    again.write_text(rendered)
    second = load_settings(again)
    assert second.model_dump() == first.model_dump()


def test_the_page_token_comes_from_its_file_or_the_credential_and_is_never_shown(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "page-token-123"
    s = load(cfg, "")
    assert s.metrics.page is True and s.page_token is None
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    s = load(cfg, '[metrics]\npage_token_file = "token"\n')
    assert s.page_token is not None and s.page_token.get_secret_value() == token
    assert s.page_token_source == "metrics.page_token_file"
    shown = render_settings(s)
    assert token not in shown and token not in repr(s) and "page token: ********" in shown
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "page_token").write_text(token)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load(cfg, "")
    assert s.page_token is not None and s.page_token_source == "$CREDENTIALS_DIRECTORY/page_token"
    (tmp_path / "token").write_text("two words\n")
    message = error(cfg, '[metrics]\npage_token_file = "token"\n')
    assert "metrics.page_token_file: " in message and "two words" not in message

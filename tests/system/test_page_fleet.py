"""The status page on the PostgreSQL backend (SPEC §11, "works in a fleet"): the page and
/api/status read a real fleet database, hosts included."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from bgsyncd.service.backends import load_settings
from bgsyncd.storage.contract import Found
from bgsyncd.storage.postgres.store import PostgresStore
from bgsyncd.web.app import PageApp
from bgsyncd.web.security import Guard
from bgsyncd.web.thumbcache import ThumbCache
from bgsyncd.web.view import Live

HOSTS = [{"id": "host-a", "folders": ["f"], "last_seen": 1.0e9, "in_flight": 2}]


def _get(app: PageApp, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {
        "PATH_INFO": path,
        "REQUEST_METHOD": "GET",
        "HTTP_HOST": "127.0.0.1:9808",
        "wsgi.input": io.BytesIO(),
    }
    got: list[str] = []
    body = b"".join(app(environ, lambda s, h, exc=None: got.append(s)))  # type: ignore[arg-type]
    return got[0], body


def test_the_page_and_api_status_read_a_fleet_database(pg_dsn: str, tmp_path: Path) -> None:
    for name in ("in", "out", "q"):
        (tmp_path / name).mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[queue]\ndatabase = "{tmp_path}/state/queue.sqlite3"\n'
        '[[folder]]\nname = "f"\ninbox = "in"\noutbox = "out"\nquarantine = "q"\n'
    )
    settings = load_settings(cfg)
    with PostgresStore(pg_dsn, host_id="host-a") as store:
        store.enqueue_many([Found("f", n, 1, 1, 1) for n in ("a.jpg", "b.jpg", "<i>c</i>.jpg")])
        for _ in range(2):
            job = store.claim(60)
            assert job is not None
            if job.relpath == "<i>c</i>.jpg":
                store.quarantine(job, "corrupt_image", "bad", None, location=job.relpath)
            else:
                store.complete(job, [job.relpath + ".png"])
        live = Live(store, lambda: settings, hosts=lambda: HOSTS)
        app = PageApp(live, Guard("127.0.0.1", 9808, None), ThumbCache(tmp_path / "thumbs"))
        status, body = _get(app, "/api/status")
        assert status.startswith("200")
        got = json.loads(body)
        assert got["hosts"] == HOSTS
        assert sum(got["jobs"].values()) == 3 and got["jobs"]["pending"] == 1
        status, page = _get(app, "/")
        text = page.decode()
        assert status.startswith("200") and 'data-host="host-a"' in text
        assert f'<td data-state="done">{got["folders"]["f"]["done"]}</td>' in text
        assert "<i>c</i>" not in text
        assert text.count("data-job=") == 3

"""The watch probe bgsyncd asks on watchdog 6 (``inbox.limits.watch_available``), under a
real watch limit set in a user namespace of its own (the daemon runs are in
``tests/system/test_watch_limit_daemon.py``)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.namespaces import namespaces_work

pytestmark = pytest.mark.skipif(
    not namespaces_work(), reason="needs user namespaces (unshare --user) to set a watch limit"
)


def test_the_watch_probe_says_no_exactly_when_inotify_is_out_of_watches(tmp_path: Path) -> None:
    # What tells bgsyncd, on watchdog 6, that a new folder's watch failed.
    code = (
        "import sys; from bgsyncd.inbox.limits import watch_available as w; print(w(sys.argv[1]))"
    )
    run = shlex.join([sys.executable, "-c", code, str(tmp_path)])
    for watches, want in ((0, "False"), (1, "True")):
        script = f"echo {watches} > /proc/sys/user/max_inotify_watches && exec {run}"
        done = subprocess.run(
            ["unshare", "--user", "--map-root-user", "sh", "-c", script],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert (done.returncode, done.stdout.strip()) == (0, want), done.stderr

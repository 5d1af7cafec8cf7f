"""An inbox that inotify cannot watch is polled instead (SPEC §6), under a real watch limit.

The limit is real, and lowered for the daemon alone: the daemon runs in a user
namespace of its own (``unshare --user --map-root-user``), where it writes its
namespace's ``/proc/sys/user/max_inotify_watches`` before it starts. The kernel
charges every inotify watch to its user in each namespace up the chain, so the
lowered value binds that daemon and nothing else; the machine's
``fs.inotify.max_user_watches`` is never written, and the other tests running on
this machine at the same time are not touched.
"""

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

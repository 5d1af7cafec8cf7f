"""Whether user namespaces work here: the watch-limit tests set a limit inside one."""

from __future__ import annotations

import shutil
import subprocess


def namespaces_work() -> bool:
    """``unshare --user`` may set ``max_inotify_watches`` in a namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = "echo 3 > /proc/sys/user/max_inotify_watches"
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", probe],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return result.returncode == 0

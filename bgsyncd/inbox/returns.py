"""Putting a quarantined file back into its inbox and queueing it again (``bgsyncd retry``).

The one action behind ``bgsyncd retry`` and the status page's Retry button:
the file moves from the quarantine back to its place in the inbox (its
sidecar removed), through directory descriptors like every operation under the
folders (SPEC §4), and its job goes back to pending with a fresh count.
"""

from __future__ import annotations

import posixpath
from contextlib import suppress

from bgsyncd.config.schema import FolderSettings
from bgsyncd.files import fsops
from bgsyncd.files.moves import move_to
from bgsyncd.files.outputs import sidecar_name
from bgsyncd.storage.contract import Job, JobStore


def quarantined_at(job: Job) -> str:
    """Where a quarantined job's file is, relative to the quarantine: its own name, or
    ``photo~2.jpg`` beside an older one."""
    return job.outputs[0] if job.outputs else job.relpath


def return_quarantined(folder: FolderSettings, job: Job, queue: JobStore) -> bool:
    """Move ``job``'s quarantined file back into the inbox and queue it again.

    False when the file is neither in the quarantine nor in the inbox (nothing
    is queued); OSError when the disk refuses the move (the file stays where it is).
    """
    qrel = quarantined_at(job)
    if fsops.regular_stat(folder.quarantine, qrel) is not None:
        side = posixpath.join(
            posixpath.dirname(qrel), sidecar_name(posixpath.basename(qrel), job.relpath)
        )
        move_to(folder.quarantine, qrel, folder.inbox, job.relpath)
        with suppress(FileNotFoundError):
            fsops.unlink(folder.quarantine, side)
    elif fsops.regular_stat(folder.inbox, job.relpath) is None:
        return False
    queue.requeue(job.id)
    return True

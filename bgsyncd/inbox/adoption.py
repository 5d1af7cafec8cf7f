"""Adopting outputs that already exist, so a new queue never pays twice.

When the queue database is new (first start, or lost and made again), an
input whose outputs are already in the outbox and newer than it was processed
before: restoring a server, or moving from another tool. Only outputs
written before the queue was made count: those written since are the
daemon's own, and prove nothing of the version found now. Such an input is
recorded as done without a request (``job.adopted``), its output names
claimed so they stay stable, and ``after_success`` is not applied. Only the
unsuffixed names are looked for (SPEC §4). A folder with renditions needs
each rendition's outputs in its tree too (a job is done once all its outputs
exist, SPEC §9); only the folder's own names are claimed then, a rendition's
are claimed when the job is made anew (``retry``). Adoption happens as files are
found, before they are queued: it costs no request, so it goes on while
dispatch is paused or the rate window is full.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from bgsyncd import imaging
from bgsyncd.config.schema import FolderSettings, RenditionSettings
from bgsyncd.files import outputs
from bgsyncd.logs import get_logger
from bgsyncd.storage.contract import Found, Store

log = get_logger("bgsyncd.adoption")


def expected_outputs(folder: FolderSettings, relpath: str) -> list[str]:
    """The unsuffixed output names of input ``relpath`` under ``folder``'s settings."""
    return _expected(folder, folder, relpath)


def _expected(
    folder: FolderSettings, tree: FolderSettings | RenditionSettings, relpath: str
) -> list[str]:
    """The unsuffixed names of ``relpath``'s outputs in one tree (the folder's own or a
    rendition's)."""
    ext = imaging.output_extension(tree.output, tree.format)
    primary = next(outputs.output_candidates(relpath, ext, tree.name_template, folder.name))
    if tree.output == "both":
        return [primary, next(outputs.mask_candidates(primary, relpath))]
    return [primary]


class Adopter:
    """Adopts found inputs whose outputs exist; for a queue that is new."""

    def __init__(
        self,
        queue: Store,
        folders: Callable[[], Mapping[str, FolderSettings]],
        *,
        made_ns: int | None = None,
    ) -> None:
        """``made_ns``: when the queue was made (default: now, made with it)."""
        self._queue = queue
        # When the queue was made (wall clock, ns): only outputs older than that
        # are adopted. One written since is this queue's own work, for some
        # version of some input (a file rewritten while it was processed, then
        # gone and back): never proof that the version found now is done.
        self._made_ns = time.time_ns() if made_ns is None else made_ns
        self._folders = folders  # the settings in force (replaced on reload)

    def adopt(self, found: Iterable[Found]) -> list[Found]:
        """Adopt what can be adopted; return the rest, to be queued as usual."""
        rest = []
        folders = self._folders()
        for f in found:
            folder = folders.get(f.folder)
            if folder is None or not self._adopt_one(folder, f):
                rest.append(f)
        return rest

    def _adopt_one(self, folder: FolderSettings, f: Found) -> bool:
        names = expected_outputs(folder, f.relpath)
        if not outputs.outputs_newer_than(folder.outbox, names, f.mtime_ns, self._made_ns):
            return False
        for r in folder.rendition:
            made = _expected(folder, r, f.relpath)
            if not outputs.outputs_newer_than(r.outbox, made, f.mtime_ns, self._made_ns):
                return False
        if not self._queue.adopt(f, names):
            return False
        log.info("job.adopted", folder=f.folder, path=f.relpath, outputs=names)
        return True

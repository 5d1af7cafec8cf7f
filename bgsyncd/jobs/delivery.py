"""A job's outputs delivered: their names claimed, the files written, the input dealt with.

The worker's success path on the files (SPEC §4): the output names are
claimed in the store before a credit is spent on them, the outputs are
written (atomically, :mod:`bgsyncd.files.outputs`), and once they are durable the
input is kept, deleted or moved to ``done``, unless it changed meanwhile.
A write that fails raises ``OSError``; the worker reports it (``WriteFailed``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bgsyncd import imaging
from bgsyncd.config.schema import FolderSettings
from bgsyncd.files import moves, outputs
from bgsyncd.files.inputs import Signature, signature_of
from bgsyncd.storage.contract import Found, Job, Store


def claim_names(queue: Store, job: Job, folder: FolderSettings) -> None:
    """Claim the output names now, so that no credit is spent on a name that cannot be had."""
    primary = queue.claim_output(job.folder, job.id, _candidates(job, folder))
    if folder.output == "both":
        mask = outputs.mask_candidates(primary, job.relpath)
        queue.claim_output(job.folder, job.id, mask)


def write_outputs(
    queue: Store, job: Job, folder: FolderSettings, rendered: imaging.Rendered
) -> list[str]:
    """Write what ``folder`` asks for under its claimed names; the names written."""
    primary = queue.claim_output(job.folder, job.id, _candidates(job, folder))
    if folder.output == "mask":
        assert rendered.mask is not None  # render made what the folder asks for
        outputs.write_file(folder.outbox, primary, rendered.mask)
        return [primary]
    assert rendered.cutout is not None
    outputs.write_file(folder.outbox, primary, rendered.cutout)
    written = [primary]
    if folder.output == "both":
        # The mask's name is claimed too: `a.mask.jpg` beside `a.jpg` must not
        # write the same file as a.jpg's mask.
        mask = queue.claim_output(job.folder, job.id, outputs.mask_candidates(primary, job.relpath))
        assert rendered.mask is not None
        outputs.write_file(folder.outbox, mask, rendered.mask)
        written.append(mask)
    return written


def outputs_already_written(queue: Store, job: Job, folder: FolderSettings, sig: Signature) -> bool:
    """Every output this job claimed exists and is newer than its input."""
    claimed = queue.claimed_outputs(job.id)
    if len(claimed) < (2 if folder.output == "both" else 1):
        return False
    return outputs.outputs_newer_than(folder.outbox, claimed, sig[1])


def after_success(
    queue: Store, job: Job, folder: FolderSettings, sig: Signature, bound: Any
) -> None:
    """Keep, delete or move the input, once its outputs are durable."""
    now = signature_of(folder.inbox, job.relpath)
    if now != sig:
        # Changed (queued again), gone, or its path now leads through a
        # symlink: never delete or move it.
        if now is not None:
            size, mtime_ns, inode = now
            queue.enqueue_many([Found(job.folder, job.relpath, size, mtime_ns, inode)])
            bound.info("file.changed", note="changed while processed; queued again")
        elif folder.after_success != "keep":
            # Its folder may be away (swapped, unmounted) and come back: the
            # input then stays where it is, done, and is not processed again.
            bound.warning("file.vanished", during=f"after success ({folder.after_success})")
        return
    if folder.after_success == "delete":
        try:
            moves.delete_input(folder.inbox, job.relpath, sig)
        except moves.InputRewritten as exc:  # written just before its name went: it stays
            queue.enqueue_many([Found(job.folder, exc.relpath, *exc.signature)])
            bound.info("file.changed", note="changed while processed; queued again")
        except FileNotFoundError:
            bound.warning("file.vanished", during="delete")
    elif folder.after_success == "move" and folder.done is not None:
        try:
            moves.move_to(folder.inbox, job.relpath, folder.done, job.relpath)
        except FileNotFoundError:
            bound.warning("file.vanished", during="move to done")


def after_success_target(folder: FolderSettings) -> tuple[str, str]:
    """Where keeping, deleting or moving the input writes, for a message."""
    if folder.after_success == "move" and folder.done is not None:
        return str(folder.done), "moving the input to done"
    return str(folder.inbox), "deleting the input"


def _candidates(job: Job, folder: FolderSettings) -> Iterator[str]:
    """The primary output's names, in order (SPEC §4, after ``name_template``)."""
    ext = "png" if folder.output == "mask" else imaging.EXTENSIONS[folder.format]
    return outputs.output_candidates(job.relpath, ext, folder.name_template, folder.name)

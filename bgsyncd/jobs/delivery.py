"""A job's outputs delivered: their names claimed, the files written, the input dealt with.

The worker's success path on the files (SPEC §4, §9): the output names are
claimed in the store, in the folder's own tree and each rendition's, before a
credit is spent on them; the outputs are written (atomically,
:mod:`bgsyncd.files.outputs`), tree by tree; and once every tree's are durable
the input is kept, deleted or moved to ``done``, unless it changed meanwhile.
A write that fails raises ``OSError``; the worker reports it (``WriteFailed``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgsyncd import imaging
from bgsyncd.config.finishing import Finishing
from bgsyncd.config.schema import FolderSettings
from bgsyncd.files import moves, outputs
from bgsyncd.files.inputs import Signature, signature_of
from bgsyncd.storage.contract import OWN_TREE, Found, Job, Store


@dataclass(frozen=True)
class Tree:
    """One mirrored tree a job's outputs go to: the folder's own outbox, or a rendition's.

    ``key`` names it in the store's claims (``storage.OutputClaims``): ``OWN_TREE``
    for the folder's own, the rendition's (resolved) outbox path for one of its
    renditions, which stays the same when renditions are added or reordered.
    """

    key: str
    outbox: Path
    finishing: Finishing

    def output(self, name: str) -> str:
        """How an output's name is recorded and logged: relative to the folder's own
        outbox, a rendition's as its full path (``outbox / it`` is the file either way)."""
        return name if self.key == OWN_TREE else str(self.outbox / name)


def trees(folder: FolderSettings) -> list[Tree]:
    """The folder's own tree, then each rendition's, in the configuration's order (SPEC §9)."""
    own = Tree(OWN_TREE, folder.outbox, folder.finishing())
    return [
        own,
        *(Tree(str(r.outbox), r.outbox, r.finishing(folder.edges)) for r in folder.rendition),
    ]


def claim_names(queue: Store, job: Job, folder: FolderSettings) -> None:
    """Claim the output names in every tree now, so that no credit is spent on a name
    that cannot be had."""
    for tree in trees(folder):
        primary = queue.claim_output(job.folder, job.id, _candidates(job, folder, tree), tree.key)
        if tree.finishing.output == "both":
            mask = outputs.mask_candidates(primary, job.relpath)
            queue.claim_output(job.folder, job.id, mask, tree.key)


def write_tree(
    queue: Store, job: Job, folder: FolderSettings, tree: Tree, rendered: imaging.Rendered
) -> list[str]:
    """Write what ``tree``'s finishing asks for under its claimed names; the names
    written, as :meth:`Tree.output` records them."""
    primary = queue.claim_output(job.folder, job.id, _candidates(job, folder, tree), tree.key)
    if tree.finishing.output == "mask":
        assert rendered.mask is not None  # render made what the finishing asks for
        outputs.write_file(tree.outbox, primary, rendered.mask)
        return [tree.output(primary)]
    assert rendered.cutout is not None
    outputs.write_file(tree.outbox, primary, rendered.cutout)
    written = [tree.output(primary)]
    if tree.finishing.output == "both":
        # The mask's name is claimed too: `a.mask.jpg` beside `a.jpg` must not
        # write the same file as a.jpg's mask.
        mask_names = outputs.mask_candidates(primary, job.relpath)
        mask = queue.claim_output(job.folder, job.id, mask_names, tree.key)
        assert rendered.mask is not None
        outputs.write_file(tree.outbox, mask, rendered.mask)
        written.append(tree.output(mask))
    return written


def outputs_already_written(queue: Store, job: Job, folder: FolderSettings, sig: Signature) -> bool:
    """Every output this job claimed, in every tree, exists and is newer than its input."""
    for tree in trees(folder):
        claimed = queue.claimed_outputs(job.id, tree.key)
        if len(claimed) < (2 if tree.finishing.output == "both" else 1):
            return False
        if not outputs.outputs_newer_than(tree.outbox, claimed, sig[1]):
            return False
    return True


def claimed_outputs(queue: Store, job: Job, folder: FolderSettings) -> list[str]:
    """Every output this job claimed in its folder's trees, as :meth:`Tree.output` records them."""
    return [
        tree.output(name)
        for tree in trees(folder)
        for name in queue.claimed_outputs(job.id, tree.key)
    ]


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


def _candidates(job: Job, folder: FolderSettings, tree: Tree) -> Iterator[str]:
    """A tree's primary output names, in order (SPEC §4, after ``name_template``)."""
    finishing = tree.finishing
    ext = imaging.output_extension(finishing.output, finishing.format)
    return outputs.output_candidates(job.relpath, ext, finishing.name_template, folder.name)

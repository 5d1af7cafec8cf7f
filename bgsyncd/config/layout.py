"""The folders of a configuration: inboxes that exist, output trees that do not collide.

Part of loading the configuration (``config.loading.load_settings`` calls it); every
problem is a ``ConfigError`` naming the key (``folder[1].outbox``) and the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

from bgsyncd.config.messages import invalid
from bgsyncd.config.schema import FolderSettings
from bgsyncd.errors import describe_os_error
from bgsyncd.files import rootfd


def output_trees(folder: FolderSettings) -> list[tuple[str, Path]]:
    """The folders bgsyncd writes into for ``folder``, by key: outbox, quarantine, done, renditions.

    A rendition's outbox is checked and created like any output tree (SPEC §9).
    """
    trees = [("outbox", folder.outbox), ("quarantine", folder.quarantine)]
    if folder.done is not None:
        trees.append(("done", folder.done))
    trees.extend((f"rendition[{j}].outbox", r.outbox) for j, r in enumerate(folder.rendition))
    return trees


def check_folders(folders: Sequence[FolderSettings], file: Path) -> None:
    """Each inbox exists; nothing we write lands in an inbox or on another output."""
    for i, f in enumerate(folders):
        if not f.inbox.is_dir():
            message = f"{f.inbox} does not exist or is not a folder"
            raise invalid(file, f"folder[{i}].inbox", message)
        for kind, path in output_trees(f):
            if path.exists() and not path.is_dir():
                raise invalid(file, f"folder[{i}].{kind}", f"{path} exists and is not a folder")
    inboxes = [(f"folder[{i}].inbox", f.inbox.resolve()) for i, f in enumerate(folders)]
    trees = [
        (f"folder[{i}].{kind}", kind, path.resolve())
        for i, f in enumerate(folders)
        for kind, path in output_trees(f)
    ]
    for (key_a, a), (key_b, b) in combinations(inboxes, 2):
        if relation := _nesting(b, a):
            raise invalid(file, key_b, f"{b} {relation} {key_a} ({a}); inboxes must not overlap")
    # Any inbox, the folder's own included, and either way round: an outbox that
    # contains an inbox receives outputs under that inbox's relative paths too.
    for key, _kind, path in trees:
        for inbox_key, inbox in inboxes:
            if relation := _nesting(path, inbox):
                raise invalid(
                    file,
                    key,
                    f"{path} {relation} {inbox_key} ({inbox}); "
                    "files written there would be picked up as new inputs",
                )
    # Output names are claimed per folder, and quarantine never overwrites: only
    # quarantine folders may be shared.
    for (key_a, kind_a, a), (key_b, kind_b, b) in combinations(trees, 2):
        if kind_a == kind_b == "quarantine":
            continue
        if relation := _nesting(b, a):
            raise invalid(file, key_b, f"{b} {relation} {key_a} ({a}); their files would collide")


def create_folders(folders: Sequence[FolderSettings], file: Path) -> None:
    """Create the missing outbox, quarantine and done folders (with parents).

    Their paths are resolved first (a symlink the operator put in the
    configured path is meant), then made without following a symlink at any
    level (:func:`bgsyncd.files.rootfd.make_dirs`, unlike ``os.makedirs``): one
    swapped in meanwhile fails the load instead of leading elsewhere.
    """
    for i, f in enumerate(folders):
        for kind, path in output_trees(f):
            try:
                rootfd.make_dirs(path.resolve())
            except OSError as exc:
                if path.exists() and not path.is_dir():
                    raise invalid(
                        file, f"folder[{i}].{kind}", f"{path} exists and is not a folder"
                    ) from None
                raise invalid(
                    file, f"folder[{i}].{kind}", f"cannot create {path}: {describe_os_error(exc)}"
                ) from None


def _nesting(a: Path, b: Path) -> str | None:
    """How resolved path ``a`` relates to ``b``: "is", "is inside", "contains" or None."""
    # Compare component tuples: `x in path.parents` builds Path objects, and
    # with 50 folders this runs thousands of times at every start.
    pa, pb = a.parts, b.parts
    if pa == pb:
        return "is"
    if len(pa) > len(pb) and pa[: len(pb)] == pb:
        return "is inside"
    if len(pb) > len(pa) and pb[: len(pa)] == pa:
        return "contains"
    return None

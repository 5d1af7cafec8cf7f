"""Names of what bgsyncd writes: outputs, masks, quarantined files, sidecars.

Pure functions, decided before anything is sent. NAME_MAX is 255 *bytes* on
ext4, xfs, btrfs and tmpfs: a name that would not fit is shortened by one rule
(SPEC §4) — the stem cut at a UTF-8 boundary, then ``~`` and 8 hex digits of
the sha256 of the input's relative path, then the rest (``.png``,
``.mask.png``, ``.error.json``), cut further so that any ``~2``-style suffix
fits too. The hash keeps two long names that share their first 200 bytes
apart; the same input always gets the same name. ``first_free_output`` is the
claim rule both stores follow, given their lookups: a path is claimed with
every folder on its way.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath

NAME_MAX = 255
# Room kept for a "~N" collision suffix after a shortened stem ("~" + 11 digits).
SUFFIX_ROOM = 12
# An input's extension longer than this is not kept whole as the "rest".
_MAX_REST = 32


def utf8_len(text: str) -> int:
    """The length of ``text`` as a file name, in bytes."""
    return len(text.encode("utf-8", "surrogateescape"))


def cut_utf8(text: str, limit: int) -> str:
    """The longest start of ``text`` within ``limit`` bytes, never half a character."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return text
    return raw[: max(limit, 0)].decode("utf-8", "ignore")


def path_tag(relpath: str) -> str:
    """``~`` and 8 hex digits of the sha256 of the input's relative path."""
    digest = hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).hexdigest()
    return f"~{digest[:8]}"


def fit_name(base: str, rest: str, relpath: str, numbered: str = "", keep: int = 0) -> str:
    """``base + numbered + rest`` if it fits in 255 bytes (less ``keep``), else shortened.

    Shortened: ``cut(base) + ~hash8(relpath) + numbered + rest``, with the cut
    leaving room for any ``~N``, so every numbered variant of one base shares
    its prefix. ``keep`` reserves bytes for a suffix added later (a
    quarantined file's ``.error.json``).
    """
    limit = NAME_MAX - keep
    name = base + numbered + rest
    if utf8_len(name) <= limit:
        return name
    room = limit - utf8_len(path_tag(relpath)) - utf8_len(rest) - SUFFIX_ROOM
    return cut_utf8(base, room) + path_tag(relpath) + numbered + rest


def fill_template(template: str, *, stem: str, ext: str, folder: str) -> str:
    """``name_template`` with its fields filled in (checked by the configuration first)."""
    return template.format(stem=stem, ext=ext, folder=folder)


def output_candidates(
    relpath: str, ext: str, template: str = "{stem}", folder: str = ""
) -> Iterator[str]:
    """Output names for input ``relpath`` in order of preference (endless).

    ``dir/a.jpg`` -> ``dir/a.png``, ``dir/a.jpg.png``, ``dir/a.jpg~2.png``,
    ``dir/a.jpg~3.png``... The queue claims the first one no other input owns.
    ``template`` (``name_template``, checked by the configuration) makes the
    stem from ``{stem}``, ``{ext}`` (the input's, no dot) and ``{folder}``; the
    later candidates fill ``{stem}`` with the input's whole name. Each name
    fits in 255 bytes (see the module's rule), applied after templating.
    """
    parent, name = posixpath.split(relpath)
    pure = PurePosixPath(name)
    stem, own_ext = pure.stem, pure.suffix[1:]

    def base(of: str) -> str:
        return fill_template(template, stem=of, ext=own_ext, folder=folder)

    rest = f".{ext}"
    first = fit_name(base(stem), rest, relpath)
    yield posixpath.join(parent, first)
    whole = fit_name(base(name), rest, relpath)
    # A name without extension (or two names cut to one) would repeat the first.
    if whole != first:
        yield posixpath.join(parent, whole)
    n = 2
    while True:
        yield posixpath.join(parent, fit_name(base(name), rest, relpath, f"~{n}"))
        n += 1


def mask_candidates(cutout_relpath: str, relpath: str) -> Iterator[str]:
    """Names for the mask beside a cut-out (endless), for claiming in the queue.

    ``dir/a.png`` -> ``dir/a.mask.png``, ``dir/a.mask~2.png``... The others
    only matter when another input's cut-out already owns the first (an input
    named ``a.mask.jpg`` next to ``a.jpg``). ``relpath`` is the input's.
    """
    folder, name = posixpath.split(cutout_relpath)
    stem = PurePosixPath(name).stem
    yield posixpath.join(folder, fit_name(stem, ".mask.png", relpath))
    n = 2
    while True:
        yield posixpath.join(folder, fit_name(f"{stem}.mask", ".png", relpath, f"~{n}"))
        n += 1


def first_free_output(
    candidates: Iterable[str],
    job_id: int,
    owner_of: Callable[[str], int | None],
    holds_inside: Callable[[str], bool],
) -> tuple[str, bool] | None:
    """The first candidate output path that is ``job_id``'s or free, and whether it is new.

    The claim rule of SPEC §4, for both stores: a path is claimed with every
    folder on its way. A file name is free only when no other job owns it and
    nothing stands inside it as a folder (``holds_inside``: another output
    below it, or an inbox folder of that name holding inputs, which mirrors
    into the outbox). A folder on the way that another output owns as a file
    (``owner_of``) gets the next free name, ``a.png~2``, the same for every
    input in it. None: the candidates ran out.
    """
    routes: dict[str, str] = {}
    for candidate in candidates:
        parent, name = posixpath.split(candidate)
        if parent not in routes:
            routes[parent] = _route(parent, owner_of)
        path = posixpath.join(routes[parent], name)
        owner = owner_of(path)
        if owner == job_id:
            return path, False
        if owner is None and not holds_inside(path):
            return path, True
    return None


def _route(parent: str, owner_of: Callable[[str], int | None]) -> str:
    """``parent`` with each folder that an output file owns renamed ``~2``, ``~3``..."""
    routed = ""
    inbox_path = ""
    for part in parent.split("/") if parent else ():
        inbox_path = posixpath.join(inbox_path, part)
        here = posixpath.join(routed, part)
        n = 2
        while owner_of(here) is not None:
            here = posixpath.join(routed, fit_name(part, "", inbox_path, f"~{n}"))
            n += 1
        routed = here
    return routed


def numbered_names(name: str, relpath: str, keep: int = 0) -> Iterator[str]:
    """``photo.jpg``, ``photo~2.jpg``, ``photo~3.jpg``... (endless), each within 255 bytes.

    For moves into quarantine (``keep``: room for the sidecar suffix) and
    ``done``. The first is the name itself, whatever its length: it exists in
    the inbox, so it fits.
    """
    yield name
    stem, ext = _split_ext(name)
    n = 2
    while True:
        yield fit_name(stem, ext, relpath, f"~{n}", keep)
        n += 1


def sidecar_name(name: str, relpath: str) -> str:
    """A quarantined file's sidecar: ``photo.jpg`` -> ``photo.jpg.error.json``, shortened
    by the module's rule when that would not fit."""
    return fit_name(name, ".error.json", relpath)


def _split_ext(name: str) -> tuple[str, str]:
    suffix = PurePosixPath(name).suffix
    if not suffix or utf8_len(suffix) > _MAX_REST:
        return name, ""
    return name[: -len(suffix)], suffix

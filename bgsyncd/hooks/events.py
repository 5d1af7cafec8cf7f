"""A hook's event: what a command and a webhook are told about one file (SPEC §10).

Pure functions: the worker asks :func:`done_hooks` and :func:`quarantine_hooks`
what to record with a job's transition (one :class:`~bgsyncd.storage.contract.HookEvent`
per kind the folder configures, all with the event's one id), and the runner
asks :func:`environment` for a command's ``BGSYNCD_*`` variables. A file name
is only ever a value in the JSON object or an environment variable, never a
command's argument.
"""

from __future__ import annotations

import json
import uuid
from pathlib import PurePosixPath
from typing import Any

from bgsyncd.config.schema import FolderSettings
from bgsyncd.files.names import sidecar_name
from bgsyncd.storage.contract import HookEvent, Job

DONE = "done"
QUARANTINED = "quarantined"
COMMAND = "command"
WEBHOOK = "webhook"


def new_event_id() -> str:
    """A fresh event id: the same for every kind and every try of one event."""
    return str(uuid.uuid4())


def done_hooks(
    job: Job, folder: FolderSettings, outputs: list[str] | tuple[str, ...], event_id: str
) -> list[HookEvent]:
    """What to record when ``job`` is marked done with ``outputs`` (as the store records them).

    ``input`` is where the input will be once dealt with: the done folder
    when it is moved there, else the inbox (where it stays, or stood).
    """
    if not (folder.on_done or folder.webhook):
        return []
    where = folder.done if folder.after_success == "move" and folder.done else folder.inbox
    payload: dict[str, Any] = {
        "event": DONE,
        "event_id": event_id,
        "folder": job.folder,
        "relpath": job.relpath,
        "input": str(where / job.relpath),
        "outputs": [str(folder.outbox / name) for name in outputs],
        "reason": None,
        "message": None,
        "sidecar": None,
        "sha256": job.sha256,
    }
    return _hooks(payload, bool(folder.on_done), folder)


def quarantine_hooks(
    job: Job,
    folder: FolderSettings,
    reason: str,
    message: str,
    location: str | None,
    event_id: str,
) -> list[HookEvent]:
    """What to record when ``job`` is quarantined; ``location``: its path under the
    quarantine (None: the input could not be moved and stays in the inbox)."""
    if not (folder.on_quarantine or folder.webhook):
        return []
    sidecar = None
    if location is not None:
        rel = PurePosixPath(location)
        sidecar = str(folder.quarantine / rel.parent / sidecar_name(rel.name, job.relpath))
    payload: dict[str, Any] = {
        "event": QUARANTINED,
        "event_id": event_id,
        "folder": job.folder,
        "relpath": job.relpath,
        "input": str(folder.quarantine / location) if location else str(folder.inbox / job.relpath),
        "outputs": [],
        "reason": reason,
        "message": message,
        "sidecar": sidecar,
        "sha256": job.sha256,
    }
    return _hooks(payload, bool(folder.on_quarantine), folder)


def _hooks(payload: dict[str, Any], command: bool, folder: FolderSettings) -> list[HookEvent]:
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True)
    event_id = str(payload["event_id"])
    kinds = ([COMMAND] if command else []) + ([WEBHOOK] if folder.webhook else [])
    return [HookEvent(event_id, str(payload["folder"]), kind, text) for kind in kinds]


def environment(payload: dict[str, Any]) -> dict[str, str]:
    """A command's ``BGSYNCD_*`` variables for the event ``payload`` (SPEC §10)."""
    return {
        "BGSYNCD_EVENT": str(payload["event"]),
        "BGSYNCD_EVENT_ID": str(payload["event_id"]),
        "BGSYNCD_FOLDER": str(payload["folder"]),
        "BGSYNCD_INPUT": str(payload["input"]),
        "BGSYNCD_OUTPUTS": "\n".join(payload.get("outputs") or ()),
        "BGSYNCD_REASON": str(payload.get("reason") or ""),
        "BGSYNCD_SIDECAR": str(payload.get("sidecar") or ""),
        "BGSYNCD_SHA256": str(payload.get("sha256") or ""),
    }

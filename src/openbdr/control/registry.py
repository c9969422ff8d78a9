"""Plug-in points: job kinds (kind → runner) and source types (type → opener).

Drills, retention and garbage collection live in their own packages; they register
here with `register_kind` (imported through the `openbdr.control` entry-point group or
the modules listed in `PLUGINS` or in `OPENBDR_PLUGINS`), and the scheduler, API and workers pick them up.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..capture import registry as capture_registry
from ..capture.registry import SOURCES, SourceType
from ..errors import OpenBDRError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .models import Job
    from .worker import JobContext

log = logging.getLogger(__name__)

#: modules that register job kinds or sources when they exist (others' packages)
PLUGINS = [
    "openbdr.control.runners",
    "openbdr.control.platform_jobs",
    "openbdr.control.drills",
    "openbdr.retention.control",
    "openbdr.gc.control",
]

__all__ = ["KINDS", "SOURCES", "JobKind", "SourceType", "UnknownKind", "kind", "source_type"]


class UnknownKind(OpenBDRError):
    """A job kind or source type that no installed module provides."""


@dataclass
class JobKind:
    name: str
    #: runs on a worker (embedded or agent); returns the job's result (JSON)
    run: Callable[[JobContext], dict[str, Any]]
    #: needs a host (sync, drill) or only a target (gc)
    needs_host: bool = True
    #: at most one queued/running/paused job of this kind per host
    exclusive: bool = False
    #: runs in the server after success, inside the finishing transaction
    on_success: Callable[[Session, Job, dict[str, Any]], None] | None = None
    #: runs in the server after a failure (the error line), inside the finishing transaction
    on_failure: Callable[[Session, Job, str], None] | None = None
    description: str = ""


KINDS: dict[str, JobKind] = {}
_loaded = False


def register_kind(kind: JobKind) -> None:
    KINDS[kind.name] = kind


def load_plugins() -> None:
    """Import the built-in runners and every installed plug-in once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    extra = [m.strip() for m in os.environ.get("OPENBDR_PLUGINS", "").split(",") if m.strip()]
    for name in PLUGINS + extra:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                log.warning("plug-in %s failed to import: %s", name, exc)
        except Exception as exc:  # a broken plug-in must not stop the server
            log.warning("plug-in %s failed to import: %s", name, exc)
    for ep in entry_points(group="openbdr.control"):
        try:
            ep.load()
        except Exception as exc:
            log.warning("plug-in %s failed to load: %s", ep.name, exc)


def kind(name: str) -> JobKind:
    load_plugins()
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(
            f"unknown job kind {name!r}", f"use one of: {', '.join(sorted(KINDS))}"
        ) from None


def source_type(spec: dict[str, Any]) -> SourceType:
    """The source type of a host's spec, once the plug-ins have registered theirs."""
    load_plugins()
    return capture_registry.source_type(spec)

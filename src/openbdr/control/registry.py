"""Plug-in points: job kinds (kind → runner) and source types (type → opener).

Job kinds register here with `register_kind`, from the modules listed in `PLUGINS`, in
`OPENBDR_PLUGINS` (comma-separated) or in the `openbdr.control` entry-point group; the
scheduler, API and workers pick them up. A plug-in that is named but cannot be imported
is an error (`PluginError`), never a silent skip: a server that quietly lacked the
`retention` kind once accepted retention policies and never applied them.
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

    from .models import Host, Job, Target
    from .worker import JobContext

log = logging.getLogger(__name__)

#: modules that register the built-in job kinds and source types; each must import
PLUGINS = [
    "openbdr.control.runners",
    "openbdr.control.maintenance",
    "openbdr.control.platform_jobs",
    "openbdr.control.drills",
    "openbdr.control.copy_jobs",
]

__all__ = ["KINDS", "SOURCES", "JobKind", "SourceType", "UnknownKind", "kind", "source_type"]


class UnknownKind(OpenBDRError):
    """A job kind or source type that no installed module provides."""


class PluginError(OpenBDRError):
    """A named plug-in module (or entry point) that cannot be imported."""


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
    #: runs in the server when a job is queued: fills the params the catalog decides
    #: (gc's margin comes from the policies of the target's hosts); returns the params
    defaults: Callable[[Session, Host | None, Target | None, dict[str, Any]],
                       dict[str, Any]] | None = None


KINDS: dict[str, JobKind] = {}
_loaded = False


def register_kind(kind: JobKind) -> None:
    KINDS[kind.name] = kind


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, OpenBDRError | ImportError) else f"{type(exc).__name__}: {text}"


def load_plugins() -> None:
    """Import the built-in runners and every named plug-in once.

    Raises `PluginError` naming the first module that fails: the server must not start
    without a job kind it was told to provide (its policies would be accepted and never
    applied)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a plug-in may look a kind up while it is imported
    try:
        _import_all()
    except PluginError:
        _loaded = False  # so the next caller is told too, not given a half-loaded registry
        raise


def _import_all() -> None:
    extra = [m.strip() for m in os.environ.get("OPENBDR_PLUGINS", "").split(",") if m.strip()]
    for name in PLUGINS + extra:
        try:
            importlib.import_module(name)
        except Exception as exc:
            source = "OPENBDR_PLUGINS" if name in extra and name not in PLUGINS else "built in"
            raise PluginError(
                f"plug-in {name} ({source}) cannot be imported: {_one_line(exc)}",
                "install it, or remove it from OPENBDR_PLUGINS"
                if source == "OPENBDR_PLUGINS" else "the installation is broken: reinstall openbdr",
            ) from exc
    for ep in entry_points(group="openbdr.control"):
        try:
            ep.load()
        except Exception as exc:
            raise PluginError(
                f"plug-in {ep.name} (entry point {ep.value}) cannot be loaded: {_one_line(exc)}",
                f"fix or uninstall the package that provides it ({ep.group})",
            ) from exc


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

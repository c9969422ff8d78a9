"""The one registry of source types: `image`, the agent's, and each platform's.

A source type registers itself in the module that implements it; the CLI, the agent and
the control plane open hosts only through `open_source`, so a new source needs no change
anywhere else. A spec is a JSON object with a `type` and the type's own fields, or a
short form `TYPE:ARG` on the command line (`image:/dev/sdb,/dev/sdc`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import OpenBDRError
from .base import Host

#: modules that register source types when imported (each imports only what it needs)
BUILTIN = [
    "openbdr.capture.image",
    "openbdr.capture.synthetic",
    "openbdr.capture.linux.served",
    "openbdr.capture.libvirt",
    "openbdr.capture.aws",
    "openbdr.capture.openstack",
]


class UnknownSource(OpenBDRError):
    """A source type that no installed module provides."""


@dataclass
class SourceType:
    name: str
    open: Callable[[str, dict[str, Any]], Host]
    #: checks a specification when a host is added; raises OpenBDRError
    validate: Callable[[dict[str, Any]], None] = lambda spec: None
    description: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    #: the short form `TYPE:ARG` of the command line as a spec (None: JSON only)
    parse: Callable[[str], dict[str, Any]] | None = None


SOURCES: dict[str, SourceType] = {}


def register_source(source: SourceType) -> None:
    SOURCES[source.name] = source


def _load(kind: str | None = None) -> None:
    """Import the built-in modules; for `kind`, only its own module when one is named
    after it and registers it (the others' imports, boto3's for `aws`, cost every sync
    of another type start-up time)."""
    if kind is not None and kind not in SOURCES and f"{__package__}.{kind}" in BUILTIN:
        importlib.import_module(f"{__package__}.{kind}")
    if kind is not None and kind in SOURCES:
        return
    for name in BUILTIN:
        importlib.import_module(name)


def _find(name: str) -> SourceType:
    try:
        return SOURCES[name]
    except KeyError:
        raise UnknownSource(
            f"unknown source type {name!r}", f"use one of: {', '.join(sorted(SOURCES))}"
        ) from None


def source_type(spec: dict[str, Any]) -> SourceType:
    _load()
    return _find(str(spec.get("type", "")))


def parse_spec(text: str) -> dict[str, Any]:
    """`TYPE:ARG` (the type's short form) as a spec."""
    _load()
    kind, sep, arg = text.partition(":")
    st = SOURCES.get(kind)
    if not sep or st is None or st.parse is None:
        short = sorted(n for n, s in SOURCES.items() if s.parse is not None)
        raise UnknownSource(
            f"source {text!r} is not of the form TYPE:ARG",
            f"use one of: {', '.join(f'{n}:…' for n in short)}",
        )
    spec = st.parse(arg)
    st.validate(spec)
    return spec


def open_source(host: str, spec: dict[str, Any]) -> Host:
    name = str(spec.get("type", ""))
    _load(name)
    st = _find(name)
    st.validate(spec)
    return st.open(host, spec)

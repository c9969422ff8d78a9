"""`openbdr agent protect|sync|status`: the tracking daemon and how to talk to it.

The commands join the `agent` group the control plane registers (`agent enrol`,
`agent run` — which pulls jobs); `register` adds them to it, or creates the group.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import OpenBDRError

agent_app = typer.Typer(
    no_args_is_help=True, help="The Linux agent: live disks, tracked and frozen."
)

ConfigOpt = Annotated[
    str,
    typer.Option(
        "--config", "-C", help="Agent configuration (TOML).", envvar="OPENBDR_AGENT_CONFIG"
    ),
]


def _socket(config: str) -> str:
    from .config import load

    return str(load(config).socket)


def protect(config: ConfigOpt = "/etc/openbdr/agent.toml") -> None:
    """Track the configured disks and sync them on the interval or on request."""
    from .config import load
    from .daemon import Agent

    Agent(load(config)).run()


def sync_now(config: ConfigOpt = "/etc/openbdr/agent.toml") -> None:
    """Ask the running agent for a sync now; print the result as JSON."""
    from .daemon import request

    reply = request(_socket(config), "sync")
    typer.echo(json.dumps(reply, indent=1))
    if not reply.get("ok"):
        raise OpenBDRError(f"sync failed: {reply.get('error')}")


def status(config: ConfigOpt = "/etc/openbdr/agent.toml") -> None:
    """Show the running agent's trackers and last sync as JSON."""
    from .daemon import request

    typer.echo(json.dumps(request(_socket(config), "status", timeout=30), indent=1))


volume_app = typer.Typer(
    no_args_is_help=True,
    help="Copy-on-write volumes: disks this agent creates, with instant snapshots.",
)


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise OpenBDRError(f"bad size {text!r}", "write it like 20G, 512M or 1073741824") from None


@volume_app.command("create")
def volume_create(
    directory: Annotated[str, typer.Argument(help="New directory that holds the volume.")],
    size: Annotated[str, typer.Option("--size", "-s", help="Size, e.g. 20G.")],
) -> None:
    """Create a copy-on-write volume (sparse: space is used as blocks are written)."""
    from pathlib import Path

    from ..capture.linux.cowvol import create

    typer.echo(json.dumps(create(Path(directory), _size(size))))


@volume_app.command("attach")
def volume_attach(
    directory: Annotated[str, typer.Argument(help="The volume's directory.")],
    mountpoint: Annotated[
        str | None, typer.Option(help="Where its FUSE file goes (default DIR/mnt).")
    ] = None,
) -> None:
    """Start the volume's daemon and a loop device on it; print the loop device."""
    from pathlib import Path

    from ..capture.linux.cowvol import attach

    info = attach(Path(directory), Path(mountpoint) if mountpoint else None)
    typer.echo(json.dumps(info))


@volume_app.command("detach")
def volume_detach(
    directory: Annotated[str, typer.Argument(help="The volume's directory.")],
) -> None:
    """Remove the loop device and stop the daemon (its state is saved as clean)."""
    from pathlib import Path

    from ..capture.linux.cowvol import detach

    detach(Path(directory))


def register(app: typer.Typer) -> None:
    """Add the commands to `app`'s `agent` group (the control plane's, if it made one)."""
    target = next(
        (g.typer_instance for g in app.registered_groups if g.name == "agent" and g.typer_instance),
        None,
    )
    if target is None:
        target = agent_app
        app.add_typer(agent_app, name="agent")
    target.command("protect")(protect)
    target.command("sync")(sync_now)
    target.command("status")(status)
    target.add_typer(volume_app, name="volume")

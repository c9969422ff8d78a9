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

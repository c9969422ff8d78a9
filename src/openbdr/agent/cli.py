"""`openbdr agent …`: the agent daemon, its local requests, enrolment and volumes.

`agent run --config agent.toml` is the daemon (tracking, syncs on an interval or on
request, and with `[control]` the pool's jobs from a server); given a bare JSON credential
instead it only pulls jobs (a sync proxy, as before the two were one command).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import OpenBDRError

agent_app = typer.Typer(
    no_args_is_help=True,
    help="The agent: live disks tracked and frozen, and jobs pulled from a server.",
)

DEFAULT_CONFIG = Path("/etc/openbdr/agent.toml")
#: where a proxy's credential lived before `agent run` read agent configurations
LEGACY_CREDENTIAL = Path("/etc/openbdr/agent.json")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-C",
        help=f"Agent configuration (TOML; default {DEFAULT_CONFIG}), or a proxy's JSON "
        "credential.",
        envvar="OPENBDR_AGENT_CONFIG",
        show_default=False,
    ),
]


def _config(given: Path | None) -> Path:
    if given is not None:
        return given
    if not DEFAULT_CONFIG.exists() and LEGACY_CREDENTIAL.exists():
        return LEGACY_CREDENTIAL
    return DEFAULT_CONFIG


def _client_config(given: Path | None) -> Path:
    """The configuration of the agent to talk to: the one given (--config or
    OPENBDR_AGENT_CONFIG), else the default file, else that of the one daemon running here."""
    from .config import running_configs

    if given is not None or DEFAULT_CONFIG.exists() or LEGACY_CREDENTIAL.exists():
        return _config(given)
    running = list(dict.fromkeys(running_configs()))
    if len(running) > 1:
        raise OpenBDRError(
            f"{len(running)} agents run here and {DEFAULT_CONFIG} does not exist",
            "name one with --config: " + ", ".join(str(p) for p in running),
        )
    return running[0] if running else DEFAULT_CONFIG


def _socket(config: Path | None) -> str:
    from .config import load

    return str(load(_client_config(config)).socket)


def run(
    config: ConfigOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="Jobs run at once (default: the control table's).")
    ] = None,
    poll: Annotated[
        float | None, typer.Option(help="Seconds between job polls when idle.")
    ] = None,
) -> None:
    """Track the configured disks; sync on the interval or on request.

    With a control table, also run this agent's jobs from the server (outbound HTTPS only)."""
    from ..control import jsonlog
    from .config import is_credential, load

    path = _config(config)
    jsonlog.setup()
    if is_credential(path):
        from ..control.agent import run as pull_jobs

        pull_jobs(path, workers=workers or 1, poll=poll or 2.0)
        return
    from .daemon import Agent

    cfg = load(path)
    if cfg.control is not None:
        cfg.control.workers = workers or cfg.control.workers
        cfg.control.poll = poll or cfg.control.poll
    Agent(cfg).run()


def protect(config: ConfigOpt = None) -> None:
    """The tracking daemon (old name of `agent run --config agent.toml`)."""
    run(config, None, None)


def enrol(
    server: Annotated[str, typer.Option("--server", envvar="OPENBDR_SERVER")],
    token: Annotated[str, typer.Option("--token", help="One-time enrolment token.")],
    name: Annotated[str, typer.Option("--name", help="This agent's unique name.")],
    config: ConfigOpt = None,
) -> None:
    """Exchange a one-time enrolment token for this agent's own credential.

    Saved 0600 where the configuration's control table says, or in the JSON file given."""
    from ..control.agent import enrol as do_enrol
    from .config import credential_path, is_credential, load

    path = _config(config)
    cred = credential_path(path)
    got = do_enrol(server, token, name, cred, verify=os.environ.get("OPENBDR_CA") or True)
    typer.echo(f"enrolled agent {got['name']} in pool {got['pool']}; credential in {cred}")
    if not is_credential(path) and load(path).control is None:
        typer.echo(f"add a [control] table to {path} so that `agent run` pulls jobs", err=True)


def sync_now(config: ConfigOpt = None) -> None:
    """Ask the running agent for a sync now; print the result as JSON."""
    from .daemon import request

    reply = request(_socket(config), "sync")
    typer.echo(json.dumps(reply, indent=1))
    if not reply.get("ok"):
        raise OpenBDRError(f"sync failed: {reply.get('error')}")


def status(config: ConfigOpt = None) -> None:
    """Show the running agent's trackers, last sync and server link as JSON."""
    from .daemon import request

    typer.echo(json.dumps(request(_socket(config), "status", timeout=30), indent=1))


def unprotect(
    disk: Annotated[str, typer.Argument(help="The disk's name in the configuration.")],
    config: ConfigOpt = None,
) -> None:
    """Stop protecting DISK: tracking ends, what the agent made for it is removed (its
    tracefs instance, tracking state, staging files) and its [[disk]] table leaves the
    configuration. Its restore points stay (remove them with `openbdr forget`)."""
    from ..capture.linux.source import AgentHost
    from .config import load, remove_disk
    from .daemon import request
    from .hosts import open_host

    path = _client_config(config)
    cfg = load(path)
    try:
        reply = request(str(cfg.socket), "unprotect", timeout=3600, disk=disk)
        if not reply.get("ok"):
            raise OpenBDRError(f"unprotect {disk}: {reply.get('error')}")
        removed = list(reply.get("removed") or [])
    except OpenBDRError as exc:
        if not str(exc).startswith("no agent listens"):
            raise
        host = open_host(cfg)  # the daemon is not running: clean up here
        if not isinstance(host, AgentHost):
            raise OpenBDRError(
                "unprotect handles traced disks",
                "detach a copy-on-write volume with `openbdr agent volume detach`",
            ) from None
        removed = host.unprotect(disk)
    remove_disk(path, disk)
    for what in removed:
        typer.echo(f"removed {what}")
    typer.echo(f"disk {disk} is no longer protected; its [[disk]] table left {path}")
    if len(cfg.disks) + len(cfg.volumes) == 1:
        typer.echo(f"{path} lists no disks now: the agent will not start until one is added",
                   err=True)  # fmt: skip


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
    from ..capture.linux.cowvol import attach

    info = attach(Path(directory), Path(mountpoint) if mountpoint else None)
    typer.echo(json.dumps(info))


@volume_app.command("detach")
def volume_detach(
    directory: Annotated[str, typer.Argument(help="The volume's directory.")],
) -> None:
    """Remove the loop device and stop the daemon (its state is saved as clean)."""
    from ..capture.linux.cowvol import detach

    detach(Path(directory))


def register(app: typer.Typer) -> None:
    """Add the `agent` group to `app`."""
    app.add_typer(agent_app, name="agent")
    agent_app.command("run")(run)
    agent_app.command("protect", hidden=True)(protect)
    agent_app.command("enrol")(enrol)
    agent_app.command("sync")(sync_now)
    agent_app.command("status")(status)
    agent_app.command("unprotect")(unprotect)
    agent_app.add_typer(volume_app, name="volume")

"""`openbdr gateway …`: run the DR-site gateway and issue its agent credentials."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

gateway_app = typer.Typer(no_args_is_help=True, help="The block-mode gateway of a DR site.")
token_app = typer.Typer(no_args_is_help=True, help="Agent credentials of a gateway.")
gateway_app.add_typer(token_app, name="token")

RootOpt = Annotated[
    Path,
    typer.Option("--root", help="The gateway's state directory.", envvar="OPENBDR_GATEWAY_ROOT"),
]


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or "0.0.0.0", int(port))


@gateway_app.command("serve")
def serve(
    root: RootOpt,
    volumes: Annotated[
        str,
        typer.Option(
            "--volumes",
            help="Volume backend: file:///DIR (raw + undo journal), rbd://POOL, or "
            "ebs://REGION[?endpoint=URL&profile=P&role_arn=ARN] (EBS snapshots; AWS "
            "credentials from the environment, a profile or a role).",
        ),
    ] = "",
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT (port 0: any).")] = (
        "0.0.0.0:8443"
    ),
    cert: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    key: Annotated[str | None, typer.Option(help="TLS key (PEM).")] = None,
    port_file: Annotated[
        Path | None, typer.Option("--port-file", help="Write the bound port here once ready.")
    ] = None,
) -> None:
    """Receive blocks from agents and sync proxies; write them into volumes in place."""
    from .server import make_server

    srv = make_server(
        root, volumes or f"file://{root.absolute() / 'volumes'}", _listen(listen), cert, key
    )

    def _stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    host = str(srv.server_address[0])
    print(
        f"gateway {srv.site.config['id']} on gateway://{host}:{srv.port} "
        f"(volumes {srv.site.volumes.url}; certificate {root / 'tls' / 'cert.pem'})",
        flush=True,
    )
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(srv.port))
        tmp.replace(port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        srv.site.close()
    sys.exit(0)


@token_app.command("add")
def token_add(
    root: RootOpt,
    name: Annotated[str, typer.Argument(help="The agent (or proxy) the token is for.")],
    hosts: Annotated[
        str, typer.Option("--hosts", help="Comma-separated hosts it may sync ('*': all).")
    ] = "*",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the token to this file (mode 0600).")
    ] = None,
) -> None:
    """Issue a credential; it is shown once and stored hashed."""
    import os

    from .auth import Tokens

    root.mkdir(parents=True, exist_ok=True)
    token = Tokens(root / "tokens.json").add(name, [h for h in hosts.split(",") if h])
    if out is not None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        print(f"token for {name} written to {out}")
    else:
        print(token)


@token_app.command("revoke")
def token_revoke(
    root: RootOpt, name: Annotated[str, typer.Argument(help="The agent whose tokens go.")]
) -> None:
    """Revoke every credential of an agent (takes effect at its next request)."""
    from .auth import Tokens

    print(f"revoked {Tokens(root / 'tokens.json').revoke(name)} token(s) of {name}")

"""`openbdr platform add|list|show|test|discover|remove`: platforms over the REST API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import OpenBDRError
from .cli import JsonOpt, _group, _show, client, out

platform_app = _group("Platforms (hypervisors, clouds) whose VMs are protected agentless.")

TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=1, max=600, help="Seconds to wait for the proxy (or the server) to answer.")]


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out_: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OpenBDRError(f"bad {what} {item!r}", f"write it as KEY=VALUE (--{what} user=root)")
        out_[key] = value
    return out_


def _credentials(pairs: list[str] | None, path: Path | None) -> dict[str, str] | None:
    creds: dict[str, str] = {}
    if path is not None:
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise OpenBDRError(f"cannot read credentials file {path}: {exc}",
                               'give a JSON object, e.g. {"user": "root", "password": "…"}') from None
        if not isinstance(loaded, dict):
            raise OpenBDRError(f"credentials file {path} is not a JSON object")
        creds.update({str(k): str(v) for k, v in loaded.items()})
    creds.update(_pairs(pairs, "credential"))
    return creds or None


def _slow_client(timeout: float) -> Any:
    import httpx

    c = client()
    c.http.timeout = httpx.Timeout(timeout + 30)  # the server waits up to `timeout`
    return c


@platform_app.command("add")
def platform_add(
    name: str,
    type_: Annotated[str, typer.Option("--type", help="libvirt, openstack, aws, vmware, …")],
    endpoint: Annotated[str, typer.Option("--endpoint", help="The platform's API address.")],
    credential: Annotated[list[str] | None, typer.Option(
        "--credential", help="KEY=VALUE (sealed in the catalog, never shown again).")] = None,
    credentials_file: Annotated[Path | None, typer.Option(
        "--credentials-file", help="A JSON object of credentials (keeps them off the "
        "command line).")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", help="KEY=VALUE.")] = None,
    pool: Annotated[str | None, typer.Option(
        "--pool", help="Sync proxies of this pool reach the platform (default: the server).")]
    = None,
    test: Annotated[bool, typer.Option("--test", help="Test it once added.")] = False,
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Register a platform endpoint with its credentials and proxy pool."""
    c = _slow_client(timeout)
    p = c.post("/platforms", {"name": name, "type": type_, "endpoint": endpoint,
                              "credentials": _credentials(credential, credentials_file),
                              "options": _pairs(option, "option"), "pool": pool})
    out.print(f"platform {p['name']} ({p['type']}) → {p['endpoint']}, jobs on "
              f"{'proxies of pool ' + p['pool'] if p['pool'] else 'the server'}")
    if test:
        t = c.post(f"/platforms/{name}/test?timeout={timeout}")
        out.print(f"test: {t['message']}", markup=False, highlight=False)


@platform_app.command("list")
def platform_list(json_out: JsonOpt = False) -> None:
    rows = client().get("/platforms")
    for r in rows:
        r["test"] = {True: "ok", False: "failed", None: "never"}[r["last_test_ok"]]
    _show(rows, ["name", "type", "endpoint", "pool", "test", "last_discovery", "vm_count",
                 "hosts"], json_out)


@platform_app.command("show")
def platform_show(name: str) -> None:
    """One platform as JSON (never its credentials) with its last discovered VMs."""
    c = client()
    p = c.get(f"/platforms/{name}")
    p["vms"] = c.get(f"/platforms/{name}/vms")["vms"]
    out.print_json(json.dumps(p, default=str))


@platform_app.command("test")
def platform_test(name: str, timeout: TimeoutOpt = 60.0) -> None:
    """Reach the platform with its credentials from where its jobs run."""
    t = _slow_client(timeout).post(f"/platforms/{name}/test?timeout={timeout}")
    out.print(f"platform {name}: {t['message']}", markup=False, highlight=False)


def _disks(vm: dict[str, Any]) -> str:
    parts = []
    for d in vm.get("disks") or []:
        size = d["size"] / 2**30
        bits = [d["name"], f"{size:.1f} GiB", d.get("bus") or "", d.get("format") or ""]
        text = " ".join(b for b in bits if b)
        parts.append(text + (f" (unsupported: {d['unsupported']})" if d.get("unsupported") else ""))
    return "; ".join(parts)


@platform_app.command("discover")
def platform_discover(name: str, json_out: JsonOpt = False, timeout: TimeoutOpt = 60.0) -> None:
    """List the platform's VMs: id, name, power state, disks and protecting host."""
    got = _slow_client(timeout).post(f"/platforms/{name}/discover?timeout={timeout}")
    if json_out:
        _show(got["vms"], [], True)
        return
    _show([{**vm, "disks": _disks(vm), "host": vm.get("host") or "—"} for vm in got["vms"]],
          ["id", "name", "power_state", "disks", "host"], False)


@platform_app.command("remove")
def platform_remove(name: str) -> None:
    """Forget a platform (refused while hosts are VMs of it)."""
    client().delete(f"/platforms/{name}")
    out.print(f"platform {name} removed from the catalog")

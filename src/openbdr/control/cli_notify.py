"""`openbdr notify channel add|list|show|remove|test`, `openbdr notify test|deliveries`
and `openbdr report protection`: notifications and the protection report over the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import OpenBDRError
from .cli import JsonOpt, _group, _show, client, out

notify_app = _group("Notifications: channels (webhook, email, chat), routing, deliveries.")
channel_app = typer.Typer(no_args_is_help=True, help="Notification channels and routing.")
notify_app.add_typer(channel_app, name="channel")
report_app = _group("Reports: the protection report (HTML or JSON).")

KindOpt = Annotated[list[str] | None, typer.Option(
    "--kind", help="Alert kind to send (repeatable; default: every kind). "
    "See `openbdr notify kinds`.")]
SeverityOpt = Annotated[str | None, typer.Option(
    "--min-severity", help="info, warning, error or critical.")]


@channel_app.command("add")
def channel_add(
    name: str,
    type_: Annotated[str, typer.Option("--type", help="webhook, email or chat.")],
    url: Annotated[str | None, typer.Option(help="webhook / chat: URL to POST to.")] = None,
    secret_file: Annotated[Path | None, typer.Option(
        "--secret-file", help="webhook: a file holding the HMAC secret (default: generated "
        "and printed once).")] = None,
    smtp_host: Annotated[str | None, typer.Option(help="email: SMTP server.")] = None,
    smtp_port: Annotated[int | None, typer.Option(help="email: SMTP port (587).")] = None,
    security: Annotated[str | None, typer.Option(
        help="email: starttls (default), tls or none.")] = None,
    username: Annotated[str | None, typer.Option(help="email: SMTP user.")] = None,
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="email: a file holding the SMTP password.")] = None,
    sender: Annotated[str | None, typer.Option("--from", help="email: From address.")] = None,
    to: Annotated[list[str] | None, typer.Option("--to", help="email: To (repeatable).")]
    = None,
    ca_file: Annotated[str | None, typer.Option(
        help="email: CA certificates (PEM, on the server) to trust.")] = None,
    kind: KindOpt = None,
    min_severity: SeverityOpt = None,
    resolved: Annotated[bool, typer.Option(help="Also send resolved notices.")] = True,
    report: Annotated[str | None, typer.Option(
        help="Send the protection report: daily or weekly.")] = None,
) -> None:
    """Add a channel; secrets are sealed on the server and never shown again."""
    body: dict[str, Any] = {"name": name, "type": type_, "url": url, "smtp_host": smtp_host,
                            "smtp_port": smtp_port, "security": security,
                            "username": username, "sender": sender, "recipients": to or [],
                            "ca_file": ca_file, "kinds": kind or [], "resolved": resolved,
                            "report": report}
    if min_severity:
        body["min_severity"] = min_severity
    if secret_file:
        body["secret"] = _read(secret_file)
    if password_file:
        body["password"] = _read(password_file)
    c = client().post("/notify/channels", {k: v for k, v in body.items() if v is not None})
    out.print(f"channel {c['name']} ({c['type']}): {_routing(c)}", markup=False)
    if c.get("secret"):
        out.print("webhook secret (shown once; the receiver checks X-OpenBDR-Signature "
                  "with it):", markup=False)
        out.print(c["secret"], markup=False, highlight=False)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise OpenBDRError(f"cannot read {path}: {exc.strerror}") from None


def _routing(c: dict[str, Any]) -> str:
    kinds = ", ".join(c["kinds"]) if c["kinds"] else "every kind"
    return (f"{kinds}, severity ≥ {c['min_severity']}"
            f"{', resolved notices' if c['resolved'] else ''}"
            f"{', ' + c['report'] + ' report' if c['report'] else ''}"
            f"{'' if c['enabled'] else ' (disabled)'}")


@channel_app.command("list")
def channel_list(json_out: JsonOpt = False) -> None:
    rows = client().get("/notify/channels")
    if json_out:
        _show(rows, [], True)
        return
    for r in rows:
        r["routing"] = _routing(r)
        r["where"] = r["config"].get("url") or ", ".join(r["config"].get("to") or [])
        last = r["last_delivery"]
        r["last"] = f"{last['state']} ({last['event']})" if last else "never"
    _show(rows, ["name", "type", "where", "routing", "pending", "last"], False)


@channel_app.command("show")
def channel_show(name: str) -> None:
    """One channel as JSON (never its secrets) and its last deliveries."""
    c = client()
    ch = c.get(f"/notify/channels/{name}")
    ch["deliveries"] = c.get("/notify/deliveries", channel=name, limit=10)
    out.print_json(json.dumps(ch, default=str))


@channel_app.command("set")
def channel_set(
    name: str,
    kind: KindOpt = None,
    all_kinds: Annotated[bool, typer.Option("--all-kinds", help="Send every kind.")] = False,
    min_severity: SeverityOpt = None,
    resolved: Annotated[bool | None, typer.Option("--resolved/--no-resolved")] = None,
    report: Annotated[str | None, typer.Option(help="daily, weekly or none.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable")] = None,
) -> None:
    """Change a channel's routing."""
    body: dict[str, Any] = {"min_severity": min_severity, "resolved": resolved,
                            "report": report, "enabled": enabled}
    if kind or all_kinds:
        body["kinds"] = [] if all_kinds else kind
    c = client().patch(f"/notify/channels/{name}",
                       {k: v for k, v in body.items() if v is not None})
    out.print(f"channel {c['name']}: {_routing(c)}", markup=False)


@channel_app.command("remove")
def channel_remove(name: str) -> None:
    client().delete(f"/notify/channels/{name}")
    out.print(f"channel {name} removed (its pending deliveries are dropped)")


def _test(name: str) -> None:
    t = client().post(f"/notify/channels/{name}/test")
    out.print(f"channel {name}: {t['message']}", markup=False, highlight=False)
    if not t["ok"]:
        raise typer.Exit(1)


@channel_app.command("test")
def channel_test(name: str) -> None:
    """Send a test message now and say whether the channel accepted it."""
    _test(name)


@notify_app.command("test")
def notify_test(name: str) -> None:
    """Send a test message to channel NAME now and say whether it was accepted."""
    _test(name)


@notify_app.command("deliveries")
def notify_deliveries(
    channel: Annotated[str | None, typer.Option("--channel")] = None,
    state: Annotated[str | None, typer.Option(help="pending, delivered, failed, expired")]
    = None,
    limit: Annotated[int, typer.Option()] = 50,
    json_out: JsonOpt = False,
) -> None:
    """The newest deliveries with their state, attempts and last error."""
    rows = client().get("/notify/deliveries", channel=channel, state=state, limit=limit)
    _show(rows, ["id", "channel", "event", "state", "attempts", "created", "summary",
                 "last_error"], json_out)


@notify_app.command("kinds")
def notify_kinds() -> None:
    """Alert kinds a channel can subscribe to."""
    k = client().get("/notify/kinds")
    _show([{"kind": n, "description": d} for n, d in k["kinds"].items()],
          ["kind", "description"], False)


@report_app.command("protection")
def report_protection(
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")]
    = None,
    period: Annotated[str, typer.Option(help="Failed jobs of the last day or week: daily, "
                                        "weekly.")] = "daily",
    json_out: JsonOpt = False,
) -> None:
    """What is protected, RPO met or not, drill-verified points, failing jobs, alerts."""
    c = client()
    if html is not None:
        r = c.http.get("/api/v1/reports/protection",
                       params={"format": "html", "period": period})
        if r.status_code >= 400:
            c.get("/reports/protection", format="html", period=period)  # its error line
        html.write_text(r.text)
        out.print(f"protection report written to {html}")
        return
    rep = c.get("/reports/protection", format="json", period=period)
    if json_out:
        out.print_json(json.dumps(rep))
        return
    from .report import render_text

    out.print(render_text(rep), markup=False, highlight=False)
    _show([{**h, "rpo_met": {True: "met", False: "MISSED", None: "—"}[h["rpo_met"]],
            "drill_verified": h["last_drill_verified"] or "never"} for h in rep["hosts"]],
          ["host", "policy", "protection", "rpo_met", "newest_point_age_seconds",
           "drill_verified", "open_alerts"], False)

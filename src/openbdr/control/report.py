"""The protection report: what is protected, whether each host meets its RPO target, how
old its newest point is, which points passed a DR drill (and when), failing jobs and open
alerts. `protection_report` gathers it as JSON-ready data (`status.collect` for the
facts); `render_html` and `render_text` shape it for a browser, a mailbox or a chat."""

from __future__ import annotations

import html
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import __version__
from .models import Alert, Host, Job, Point, utcnow
from .status import collect


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def protection_report(s: Session, now: datetime | None = None,
                      period: float = 86400.0) -> dict[str, Any]:
    """Every host's protection now; jobs that failed in the last `period` seconds."""
    now = now or utcnow()
    f = collect(s, None, now)
    hosts = s.execute(select(Host.id, Host.name, Host.enabled, Host.policy_id)
                      .order_by(Host.name)).all()
    drilled = dict(s.execute(
        select(Point.host_id, func.max(Point.verified))
        .where(Point.status == "verified").group_by(Point.host_id)).all())
    drilled_point = {
        h: pid for h, pid, v in s.execute(
            select(Point.host_id, Point.point_id, Point.verified)
            .where(Point.status == "verified"))
        if v is not None and drilled.get(h) == v
    }
    verified_points = dict(s.execute(
        select(Point.host_id, func.count()).where(Point.status == "verified")
        .group_by(Point.host_id)).all())
    names = {hid: name for hid, name, _, _ in hosts}
    rows: list[dict[str, Any]] = []
    for hid, name, enabled, policy_id in hosts:
        protection, rpo, age = f.state(hid, enabled, policy_id)
        policy = f.policies.get(policy_id) if policy_id else None
        last_drill = f.last_drill.get(hid)
        rows.append({
            "host": name, "policy": policy[0] if policy else None, "protection": protection,
            "rpo_seconds": rpo, "newest_point_age_seconds": round(age, 1) if age is not None
            else None,
            "rpo_met": None if protection in ("disabled", "unprotected")
            else protection != "breached",
            "points": f.points.get(hid, (0,))[0],
            "drill_verified_points": int(verified_points.get(hid, 0)),
            "last_drill_verified_point": drilled_point.get(hid),
            "last_drill_verified": _iso(drilled.get(hid)),
            "last_drill": {"state": last_drill.state, "finished": _iso(last_drill.finished)}
            if last_drill else None,
            "open_alerts": f.alerts.get(hid, 0),
        })
    since = now - timedelta(seconds=period)
    failed = [
        {"id": j.id, "kind": j.kind, "host": names.get(j.host_id) if j.host_id else None,
         "finished": _iso(j.finished), "error": (j.error or "")[:500]}
        for j in s.execute(select(Job.id, Job.kind, Job.host_id, Job.finished, Job.error)
                           .where(Job.state == "failed", Job.finished >= since)
                           .order_by(Job.id.desc()).limit(200))
    ]
    alerts = [
        {"id": a.id, "kind": a.kind, "severity": a.severity,
         "host": names.get(a.host_id) if a.host_id else None, "subject": a.subject,
         "message": a.message, "opened": _iso(a.opened)}
        for a in s.scalars(select(Alert).where(Alert.resolved.is_(None))
                           .order_by(Alert.id.desc()).limit(500))
    ]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["protection"]] = counts.get(r["protection"], 0) + 1
    return {
        "generated": now.isoformat(), "period_seconds": period, "version": __version__,
        "summary": {"hosts": len(rows), "rpo_met": sum(1 for r in rows if r["rpo_met"]),
                    "rpo_missed": sum(1 for r in rows if r["rpo_met"] is False),
                    "unprotected": counts.get("unprotected", 0),
                    "disabled": counts.get("disabled", 0),
                    "drill_verified_hosts": sum(1 for r in rows if r["last_drill_verified"]),
                    "failed_jobs": len(failed), "open_alerts": len(alerts)},
        "hosts": rows, "failed_jobs": failed, "open_alerts": alerts,
    }


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= n:
            return f"{seconds / n:.1f} {unit}"
    return f"{seconds:.0f} s"


def render_text(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = [f"OpenBDR protection report, {r['generated'][:16].replace('T', ' ')} UTC",
             f"{s['hosts']} host(s): {s['rpo_met']} meet their RPO target, "
             f"{s['rpo_missed']} do not, {s['unprotected']} unprotected; "
             f"{s['drill_verified_hosts']} with a drill-verified point; "
             f"{s['failed_jobs']} failed job(s); {s['open_alerts']} open alert(s)."]
    for h in r["hosts"]:
        if h["rpo_met"] is False or h["protection"] == "unprotected":
            lines.append(f"- {h['host']}: {h['protection']}, newest point "
                         f"{_age(h['newest_point_age_seconds'])} old")
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#1a1a1a}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f0f0f0}.bad{color:#a40000;font-weight:bold}
.ok{color:#1d6b1d}.muted{color:#666}"""


def render_html(r: dict[str, Any]) -> str:
    """One self-contained page (inline CSS, no script, nothing loaded from elsewhere)."""
    e = html.escape
    s = r["summary"]

    def table(head: list[str], rows: list[list[str]], empty: str) -> str:
        if not rows:
            return f'<p class="muted">{e(empty)}</p>'
        th = "".join(f"<th>{e(c)}</th>" for c in head)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

    def met(h: dict[str, Any]) -> str:
        if h["rpo_met"] is None:
            return f'<span class="muted">{e(h["protection"])}</span>'
        return '<span class="ok">met</span>' if h["rpo_met"] else '<span class="bad">missed</span>'

    hosts = [[e(h["host"]), e(h["policy"] or "—"), met(h),
              e(_age(h["rpo_seconds"])), e(_age(h["newest_point_age_seconds"])),
              str(h["points"]),
              e(f"{h['last_drill_verified_point']} ({h['last_drill_verified'][:16]})"
                if h["last_drill_verified"] else "never"),
              str(h["open_alerts"])] for h in r["hosts"]]
    jobs = [[str(j["id"]), e(j["kind"]), e(j["host"] or "—"), e((j["finished"] or "")[:19]),
             e(j["error"])] for j in r["failed_jobs"]]
    alerts = [[e(a["severity"]), e(a["kind"]), e(a["host"] or a["subject"] or "—"),
               e(a["opened"][:19]), e(a["message"])] for a in r["open_alerts"]]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>OpenBDR protection report</title>
<style>{CSS}</style></head><body>
<h1>OpenBDR protection report</h1>
<p class="muted">Generated {e(r["generated"][:19].replace("T", " "))} UTC by OpenBDR {e(r["version"])}.</p>
<p><strong>{s["hosts"]}</strong> host(s): <strong>{s["rpo_met"]}</strong> meet their RPO target,
<strong class="{"bad" if s["rpo_missed"] else "ok"}">{s["rpo_missed"]}</strong> do not,
{s["unprotected"]} unprotected, {s["disabled"]} disabled;
{s["drill_verified_hosts"]} with a drill-verified restore point;
{s["failed_jobs"]} failed job(s) in the period; {s["open_alerts"]} open alert(s).</p>
<h2>Hosts</h2>
{table(["Host", "Policy", "RPO", "RPO target", "Newest point age", "Points",
        "Last drill-verified point", "Open alerts"], hosts, "No host is protected yet.")}
<h2>Failed jobs</h2>
{table(["Job", "Kind", "Host", "Finished", "Error"], jobs, "No job failed in the period.")}
<h2>Open alerts</h2>
{table(["Severity", "Kind", "About", "Opened", "Message"], alerts, "No open alert.")}
</body></html>
"""

"""Alerts: at most one open alert per (kind, host, subject); resolved when the cause goes
away. Opening a new alert and resolving one queue their notifications (`notify`) in the
same transaction: an alert is never lost between the catalog and the channels."""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from .models import Alert, utcnow

#: alert kinds the control plane opens (notification routing lists them)
KINDS: dict[str, str] = {
    "rpo_breached": "a host's newest restore point is older than its RPO target",
    "job_failed": "a job failed for good",
    "point_damaged": "verification found a damaged restore point",
    "drill_failed": "a restore point failed its DR drill",
    "vm_missing": "a protected VM is gone from its platform",
    "vm_disks_changed": "a protected VM's disks changed",
    "copy_behind": "the newest copy at the second site is older than its target",
    "repository_full": "a repository's file system is nearly full",
}
SEVERITIES = ("info", "warning", "error", "critical")


def _same(kind: str, host_id: int | None, subject: str | None) -> list[ColumnElement[bool]]:
    return [Alert.kind == kind,
            Alert.host_id.is_(None) if host_id is None else Alert.host_id == host_id,
            Alert.subject.is_(None) if subject is None else Alert.subject == subject,
            Alert.resolved.is_(None)]


def open_alert(
    s: Session,
    kind: str,
    message: str,
    host_id: int | None = None,
    job_id: int | None = None,
    severity: str = "warning",
    subject: str | None = None,
) -> Alert:
    alert = s.scalar(select(Alert).where(*_same(kind, host_id, subject)))
    if alert is not None:
        alert.message = message
        alert.job_id = job_id or alert.job_id
        return alert
    alert = Alert(kind=kind, message=message, host_id=host_id, job_id=job_id, severity=severity,
                  subject=subject)
    s.add(alert)
    s.flush()
    from .notify import alert_event

    alert_event(s, alert, "opened")
    return alert


def resolve(s: Session, kind: str, host_id: int | None, subject: str | None = None) -> None:
    from .notify import alert_event

    for alert in s.scalars(select(Alert).where(*_same(kind, host_id, subject))):
        alert.resolved = utcnow()
        alert_event(s, alert, "resolved")


def copy_behind(s: Session, host_id: int, message: str, site: str | None = None,
                severity: str = "error") -> None:
    """The copy engine's hook: the host's newest copy (at `site`) is older than its target."""
    open_alert(s, "copy_behind", message, host_id=host_id, severity=severity,
               subject=f"site:{site}" if site else None)


def copy_caught_up(s: Session, host_id: int, site: str | None = None) -> None:
    """The copy engine's hook: the host's copy (at `site`) is recent again."""
    resolve(s, "copy_behind", host_id, subject=f"site:{site}" if site else None)

"""Alerts: at most one open alert per (kind, host); resolved when the cause goes away."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Alert, utcnow


def open_alert(
    s: Session,
    kind: str,
    message: str,
    host_id: int | None = None,
    job_id: int | None = None,
    severity: str = "warning",
) -> Alert:
    alert = s.scalar(
        select(Alert).where(Alert.kind == kind, Alert.host_id == host_id,
                            Alert.resolved.is_(None))
    )
    if alert is not None:
        alert.message = message
        alert.job_id = job_id or alert.job_id
        return alert
    alert = Alert(kind=kind, message=message, host_id=host_id, job_id=job_id, severity=severity)
    s.add(alert)
    s.flush()
    return alert


def resolve(s: Session, kind: str, host_id: int | None) -> None:
    for alert in s.scalars(
        select(Alert).where(Alert.kind == kind, Alert.host_id == host_id,
                            Alert.resolved.is_(None))
    ):
        alert.resolved = utcnow()

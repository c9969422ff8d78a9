"""The `copy` job kind: a host's new restore points to its policy's second site.

The destination (the policy's `copy_plan.target`, or `params.to`) is joined into the spec
with its secrets when a worker leases the job (`JobQueue._copy_to`). The result names
the destination and its newest point: the host status shows, per destination, how old
the newest copy is (a second RPO, `status.copies`).
"""

from __future__ import annotations

from typing import Any

from ..errors import OpenBDRError
from ..store.copy import copy_host
from ..store.retention import Policy as Keep
from ..store.retention import forget
from .registry import JobKind, register_kind
from .worker import JobContext, open_target

KEEP = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")


def run_copy(ctx: JobContext) -> dict[str, Any]:
    spec = ctx.spec
    host = spec.host["name"] if spec.host else ""
    if not spec.copy_to:
        raise OpenBDRError(
            f"copy job {spec.id} of {host} has no destination target",
            "set the policy's copy_plan.target to a target's name (or give params.to)",
        )
    plan = dict(spec.policy.get("copy_plan") or {})
    src = ctx.open_target()
    dst = open_target(spec.copy_to["url"], spec.copy_to.get("secrets") or {}, init=True)
    try:
        ctx.log(f"copy of {host} to {spec.copy_to['name']}")

        def on_progress(disk: str, done: int, total: int) -> None:
            ctx.check_stop()
            ctx.progress(disk=disk, done_blocks=done, total_blocks=total)

        rep = copy_host(src, dst, host, point=spec.params.get("point"), progress=on_progress)
        forgotten = 0
        keep = Keep(*(int(plan.get(k) or 0) for k in KEEP))
        if any(int(plan.get(k) or 0) for k in KEEP):
            forgotten = sum(not d.keep for d in forget(dst, keep, host))
        newest = dst.latest(host)
        if rep.failed:
            raise OpenBDRError(f"{len(rep.failed)} point(s) not copied: {rep.failed[0]}")
        return {
            "to": spec.copy_to["name"],
            "copied": rep.copied,
            "blocks_read": rep.blocks_read,
            "stored_bytes": rep.stored_bytes,
            "forgotten": forgotten,
            "newest": {"id": newest.id, "created": newest.created} if newest else None,
        }
    finally:
        src.close()
        dst.close()


register_kind(JobKind("copy", run_copy, exclusive=True,
                      description="copy new restore points to the policy's second site"))

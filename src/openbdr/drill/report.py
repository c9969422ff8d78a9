"""Drill reports: JSON for machines, one self-contained HTML page for people.

Stored in the repository beside the points they prove, so a report needs nothing else:

    drills/<host>/<drill id>/report.json
    drills/<host>/<drill id>/report.html     (screenshot inlined as base64)
    drills/<host>/<drill id>/screenshot.png
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import OpenBDRError
from ..store.blobs import NotFound
from ..store.target import DRILLS, Target

RTO_DEFINITION = (
    "Seconds from the start of `drill run` (before the disks are exported) until the first "
    "probe of the running system passed (rto_first_s) and until every check and probe had "
    "passed (rto_all_s): the time to a running, proven system, with no restore beforehand. "
    "File probes read the volumes before start and do not count towards the first."
)


class ReportNotFound(OpenBDRError):
    """No drill report with that id in the repository."""


@dataclass
class Report:
    id: str
    host: str
    point: str
    repository: str
    plan: str
    kind: str
    started: str
    finished: str = ""
    verdict: str = "error"  # passed | failed | error
    reason: str = ""
    accel: dict[str, str] = field(default_factory=dict)
    rto_first_s: float | None = None
    rto_all_s: float | None = None
    rto_definition: str = RTO_DEFINITION
    duration_s: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)  # fsck and mounts before boot
    probes: list[dict[str, Any]] = field(default_factory=list)
    console_tail: str = ""
    service_log_tail: str = ""
    screenshot: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    teardown: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Report:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


def prefix(host: str, drill_id: str) -> str:
    return f"{DRILLS}{host}/{drill_id}/"


def _css() -> str:
    return (
        "body{font:15px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
        "h1{font-size:1.5em}.passed{color:#176d2c}.failed,.error{color:#b3261e}"
        "table{border-collapse:collapse;width:100%;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}pre{background:#111;color:#ddd;padding:1em;overflow:auto;"
        "font-size:12px;max-height:30em}img{border:1px solid #999;max-width:100%}"
        ".ok{color:#176d2c;font-weight:bold}.bad{color:#b3261e;font-weight:bold}"
        "dt{font-weight:bold;float:left;width:11em}dd{margin-left:12em}"
    )


def render_html(rep: Report, screenshot_png: bytes | None) -> str:
    e = html.escape

    def secs(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f} s"

    rows = []
    for c in rep.checks:
        mark = '<span class="ok">PASS</span>' if c["ok"] else '<span class="bad">FAIL</span>'
        rows.append(
            f"<tr><td>{e(c['name'])}</td><td>{e(c['type'])}</td><td>{mark}</td>"
            f"<td>{secs(c.get('duration'))}</td><td>—</td><td>{e(c['detail'])}</td></tr>"
        )
    for p in rep.probes:
        mark = '<span class="ok">PASS</span>' if p["ok"] else '<span class="bad">FAIL</span>'
        rows.append(
            f"<tr><td>{e(p['name'])}</td><td>{e(p['type'])}</td><td>{mark}</td>"
            f"<td>{secs(p.get('duration'))}</td><td>{secs(p.get('passed_at'))}</td>"
            f"<td>{e(p['detail'])}</td></tr>"
        )
    shot = ""
    if screenshot_png:
        b64 = base64.b64encode(screenshot_png).decode()
        shot = (
            "<h2>Console screenshot</h2>"
            f'<img id="screenshot" alt="console screenshot" src="data:image/png;base64,{b64}">'
        )
    timings = ", ".join(f"{e(k)} {v:.1f} s" for k, v in rep.timings.items())
    logs = ""
    if rep.console_tail:
        logs += f"<h2>Serial console (tail)</h2><pre>{e(rep.console_tail)}</pre>"
    if rep.service_log_tail:
        logs += f"<h2>Service log (tail)</h2><pre>{e(rep.service_log_tail)}</pre>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>OpenBDR drill {e(rep.id)}: {e(rep.verdict)}</title><style>{_css()}</style></head>
<body>
<h1>Drill {e(rep.id)} of {e(rep.host)}: <span id="verdict" class="{e(rep.verdict)}">{e(rep.verdict.upper())}</span></h1>
<p>{e(rep.reason)}</p>
<dl>
<dt>Restore point</dt><dd>{e(rep.point)}</dd>
<dt>Target</dt><dd>{e(rep.repository)}</dd>
<dt>Plan</dt><dd>{e(rep.plan)} ({e(rep.kind)} drill)</dd>
<dt>Started</dt><dd>{e(rep.started)}</dd>
<dt>Finished</dt><dd>{e(rep.finished)} ({rep.duration_s:.1f} s)</dd>
<dt>Accelerator</dt><dd>{e(rep.accel.get("name", "—"))}: {e(rep.accel.get("reason", ""))}</dd>
<dt>RTO (first probe)</dt><dd id="rto-first">{secs(rep.rto_first_s)}</dd>
<dt>RTO (all probes)</dt><dd id="rto-all">{secs(rep.rto_all_s)}</dd>
<dt>Timings</dt><dd>{timings or "—"}</dd>
</dl>
<p><small>{e(rep.rto_definition)}</small></p>
<h2>Checks and probes</h2>
<table><tr><th>name</th><th>type</th><th>result</th><th>took</th><th>passed at</th><th>detail</th></tr>
{"".join(rows)}</table>
{shot}
{logs}
<p><small>Teardown: {e("; ".join(rep.teardown) or "complete")}</small></p>
</body></html>
"""


def store_report(repo: Target, rep: Report, screenshot_png: bytes | None) -> str:
    """Write the report (and screenshot) into the repository; returns its prefix."""
    pre = prefix(rep.host, rep.id)
    if screenshot_png:
        repo.meta.put(pre + "screenshot.png", screenshot_png)
        rep.screenshot = "screenshot.png"
    repo.meta.put(pre + "report.html", render_html(rep, screenshot_png).encode())
    repo.meta.put(pre + "report.json", json.dumps(rep.to_json(), indent=1).encode())
    repo.meta.flush()
    return pre


def list_reports(repo: Target, host: str | None = None) -> list[tuple[str, str]]:
    """(host, drill id) of every stored report, oldest first."""
    out = set()
    for info in repo.meta.list(f"{DRILLS}{host}/" if host else DRILLS):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] == "report.json":
            out.add((parts[1], parts[2]))
    return sorted(out, key=lambda hd: hd[1])


def find_report(repo: Target, drill_id: str, host: str | None = None) -> tuple[str, str]:
    matches = [(h, d) for h, d in list_reports(repo, host) if d == drill_id]
    if not matches:
        matches = [(h, d) for h, d in list_reports(repo, host) if d.startswith(drill_id)]
    if len(matches) != 1:
        raise ReportNotFound(
            f"no drill report {drill_id!r} in {repo.url}"
            + (" (ambiguous prefix)" if len(matches) > 1 else ""),
            f"run `openbdr drill list --repo {repo.url}` to see the drills",
        )
    return matches[0]


def load_report(repo: Target, host: str, drill_id: str) -> Report:
    try:
        raw = repo.meta.get(prefix(host, drill_id) + "report.json")
    except NotFound:
        raise ReportNotFound(f"no drill report {drill_id!r} of {host} in {repo.url}") from None
    return Report.from_json(json.loads(raw))


def get_artifact(repo: Target, host: str, drill_id: str, name: str) -> bytes:
    try:
        return repo.meta.get(prefix(host, drill_id) + name)
    except NotFound:
        raise ReportNotFound(f"drill {drill_id} of {host} has no {name}") from None

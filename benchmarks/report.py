"""Tables, ratios against the targets of issues 2 and 3, and the results part of the doc."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contenders import PARTCLONE, PHASES, Step

MIB = 1 << 20
BEGIN = "<!-- results:begin (written by benchmarks/bench_core.py) -->"
END = "<!-- results:end -->"


@dataclass
class Target:
    issue: int
    what: str
    value: float | None  # the measured ratio or amount; None when a side is missing
    limit: float
    unit: str  # "x" for ratios, "MiB" for amounts
    note: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit

    def row(self) -> list[str]:
        verdict = {True: "met", False: "**missed**", None: "n/a"}[self.met]
        if self.value is None:
            shown = "–"
        elif self.unit == "x":
            shown = f"{self.value:.2f}x"
        else:
            shown = f"{self.value:,.0f} {self.unit}"
        limit = f"≤ {self.limit:.1f}x" if self.unit == "x" else f"≤ {self.limit:,.0f} {self.unit}"
        return [f"#{self.issue}", self.what, shown, limit, verdict + self.note]


def _find(steps: Iterable[Step], contender: str, phase: str) -> Step | None:
    for s in steps:
        if s.contender == contender and s.phase == phase and s.usage is not None:
            return s
    return None


def _ratio(steps: list[Step], mine: str, phase: str, peer: str, peer_phase: str) -> float | None:
    a, b = _find(steps, mine, phase), _find(steps, peer, peer_phase)
    if a is None or b is None or a.usage is None or b.usage is None:
        return None
    return a.usage.wall / b.usage.wall


#: (issue, what, our step, peer, peer's step, limit on the wall-time ratio)
RATIO_TARGETS = [
    (2, "full sync wall / restic backup", "full", "restic", "full", 0.5),
    (2, "full sync wall / zstd -1 -T2 of the image", "full", "zstd -1 -T2", "full", 1.0),
    (
        2,
        "incremental (hash-compare) wall / restic 2nd backup",
        "incremental",
        "restic",
        "incremental",
        0.5,
    ),
    (2, "restore wall / restic restore", "restore", "restic", "restore", 0.5),
    (
        3,
        "full sync wall / partclone.ext4 -c | zstd -1 -T2",
        "full",
        PARTCLONE,
        "full",
        1.0,
    ),
]


#: the S3 variant (issue 20): against restic on the same gateway, and a bare GET of our chunks
S3_TARGETS = [
    (20, "full sync wall / restic (S3) backup", "full", "restic (S3)", "full", 0.5),
    (20, "incremental wall / restic (S3) 2nd backup", "incremental", "restic (S3)",
     "incremental", 0.5),
    (20, "restore wall / restic (S3) restore", "restore", "restic (S3)", "restore", 0.5),
    (20, "restore wall / S3 GET x32 of the chunks", "restore", "S3 GET x32 (openbdr chunks)",
     "restore", 1.3),
    (20, "restore wall / S3 GET x32 of the chunks, openbdr's GET", "restore",
     "S3 GET x32, openbdr's GET (openbdr chunks)", "restore", 1.3),
]


def targets(steps: list[Step], contender: str, allocated: int) -> list[Target]:
    """The targets of issue 2 (and, for the valid-data variant, issue 3) for one variant;
    the S3 variant's of issue 20."""
    if contender.endswith("(S3)"):
        return [
            Target(issue, what, _ratio(steps, contender, phase, peer, peer_phase), limit, "x")
            for issue, what, phase, peer, peer_phase, limit in S3_TARGETS
        ]
    valid_only = "--all-data" not in contender
    out = [
        Target(issue, what, _ratio(steps, contender, phase, peer, peer_phase), limit, "x")
        for issue, what, phase, peer, peer_phase, limit in RATIO_TARGETS
        if issue == 2 or valid_only
    ]
    rss = [s.usage.maxrss for s in steps if s.contender == contender and s.usage is not None]
    out.append(Target(2, "peak RSS (any step)", max(rss) / MIB if rss else None, 300, "MiB"))
    if valid_only:
        full = _find(steps, contender, "full")
        read = None if full is None or full.source_read is None else full.source_read / MIB
        what = "full sync: source bytes read ≤ ext4 allocated (used + metadata)"
        note = " (but the filter fell back: see the check column)" if full and full.check else ""
        out.append(Target(3, what, read, allocated / MIB, "MiB", note))
    return out


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / MIB:,.0f}"


def _samples(walls: list[float]) -> str:
    return "" if len(walls) < 2 else " (" + ", ".join(f"{w:.1f}" for w in walls) + ")"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def steps_table(steps: list[Step]) -> str:
    header = [
        "contender",
        "step",
        "wall s (rounds)",
        "CPU s (user+sys)",
        "peak RSS MiB",
        "disk read MiB",
        "device I/O MiB",
        "source read MiB",
        "stored MiB",
        "check",
    ]
    rows = []
    order = {p: i for i, p in enumerate(PHASES)}
    for s in sorted(steps, key=lambda s: order.get(s.phase, 9)):
        u = s.usage
        if u is None:
            rows.append([s.contender, s.phase, "failed", "", "", "", "", "", "", s.error[:120]])
            continue
        rows.append(
            [
                s.contender,
                s.phase,
                f"{u.wall:.1f}" + _samples(s.walls),
                f"{u.cpu:.1f} ({u.user:.1f}+{u.sys:.1f})",
                f"{u.maxrss / MIB:.0f}",
                _mib(u.disk_read),
                _mib(s.device_io),
                _mib(s.source_read),
                _mib(s.stored),
                s.check,
            ]
        )
    return _table(header, rows)


def targets_table(all_targets: dict[str, list[Target]]) -> str:
    rows = []
    for contender, ts in all_targets.items():
        rows += [[contender, *t.row()] for t in ts]
    return _table(["variant", "issue", "target", "measured", "limit", "verdict"], rows)


def results_markdown(
    meta: dict[str, Any], steps: list[Step], all_targets: dict[str, list[Target]]
) -> str:
    m = meta
    lines = [
        f"Run of {m['started']} ({m['duration_min']:.0f} min), page cache **{m['cache']}** "
        f"before every step; {m.get('rounds', 1)} round(s): each step shows its least wall "
        "time, the other figures of that round, and every round's wall time in brackets.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.0f} GiB RAM, "
        f"kernel {m['kernel']}; load average {m['load_before']} before, "
        f"{m['load_after']} after (other engineers share the CPUs: figures are noisy).",
        f"- Tools: {m['versions']}.",
        f"- Corpus: {m['corpus']}: disk.img {m['image_gib']:.0f} GiB, "
        f"{m['data_mib']:,.0f} MiB of non-hole data; ext4 used {m['used_mib']:,.0f} MiB "
        f"(df), allocated {m['allocated_mib']:,.0f} MiB including metadata; "
        f"disk2.img differs in {m['changed_blocks']} of {m['blocks']} 1 MiB blocks.",
    ]
    if m.get("merged"):
        lines.append(
            f"- Steps of {', '.join(m['merged'])} come from an earlier run ({m['merged_from']})."
        )
    lines += [
        "",
        "### Steps",
        "",
        steps_table(steps),
        "",
        "### Targets",
        "",
        targets_table(all_targets),
        "",
    ]
    return "\n".join(lines)


def write_doc(doc: Path, results: str) -> None:
    """Replace the generated part of the doc; the hand-written method and analysis stay."""
    block = f"{BEGIN}\n{results}\n{END}"
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = (text or "# Benchmarks\n") + f"\n## Results\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)

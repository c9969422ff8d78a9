"""VM drills of the bootable fixture disk, booted from the repository under TCG (or KVM)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..helpers import OPENBDR, SHARED, openbdr
from .leaks import leaked, snapshot

pytestmark = [pytest.mark.root, pytest.mark.slow]

MAKE_DISK = SHARED / "fixtures" / "make-bootable-disk"

BOOT_PLAN = """
[drill]
kind = "vm"
memory = 512
network = "probes"

[[probe]]
type = "file"
name = "init script"
path = "/etc/init.d/rcS"

[[probe]]
type = "console"
name = "guest ready"
pattern = "OPENBDR-GUEST-READY"
timeout = 300

[[probe]]
type = "http"
name = "web page"
port = 80
contains = '<span id="marker">'
timeout = 60
"""

QUICK_PLAN = """
[drill]
memory = 512
network = "none"

[[probe]]
type = "console"
pattern = "OPENBDR-GUEST-READY"
timeout = 300
"""


@pytest.fixture(scope="module")
def boot_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: run scripts/setup")
    d = tmp_path_factory.mktemp("bootdisk")
    img = d / "boot.img"
    proc = subprocess.run(
        [str(MAKE_DISK), str(img), "--size", "512M", "--marker", "drill-marker-7"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return img


@pytest.fixture
def drill_env(tmp_path: Path, state_dir: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "OPENBDR_STATE_DIR": str(state_dir)}
    before = snapshot(os.environ["TMPDIR"])
    yield env
    assert leaked(before, snapshot(os.environ["TMPDIR"])) == {}
    assert (
        not list((state_dir / "drills").glob("*.json")) if (state_dir / "drills").exists() else True
    )


def _chromium_shows_the_screenshot(html: Path, png: Path, tmp_path: Path) -> None:
    """Chromium renders the report with the console screenshot pixel for pixel."""
    from collections import Counter

    from PIL import Image

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: run scripts/setup")
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1200,1800",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--screenshot={shot}",
            html.as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    with Image.open(png) as a, Image.open(shot) as b:
        want = Counter(a.convert("RGB").getdata())
        got = Counter(b.convert("RGB").getdata())
    # pure black and VGA grey appear on the page only inside the console screenshot
    for colour, n in want.most_common(2):
        assert got[colour] >= n, (colour, got[colour], n)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _repo_with(tmp_path: Path, img: Path, host: str) -> str:
    repo = str(tmp_path / "repo")
    if not (tmp_path / "repo").exists():
        openbdr("repo", "init", repo)
    openbdr("sync", "--all-data", "--repo", repo, "--host", host, str(img))
    return repo


def test_vm_drill_boots_from_the_repository_and_marks_the_point_verified(
    boot_disk: Path, tmp_path: Path, drill_env: dict[str, str]
) -> None:
    repo = _repo_with(tmp_path, boot_disk, "web1")
    plan = tmp_path / "plan.toml"
    plan.write_text(BOOT_PLAN)
    proc = openbdr(
        "drill",
        "run",
        "--repo",
        repo,
        "--host",
        "web1",
        "--point",
        "latest",
        "--plan",
        str(plan),
        "--json",
        env=drill_env,
        timeout=900,
    )
    rep = json.loads(proc.stdout)
    assert rep["verdict"] == "passed", rep
    assert rep["accel"]["name"] in ("kvm", "tcg")
    if os.path.isdir("/sys/module/kvm_pvm"):
        assert rep["accel"]["name"] == "tcg"  # this host's /dev/kvm cannot run BIOS guests
    probes = {p["name"]: p for p in rep["probes"]}
    assert probes["guest ready"]["ok"] and probes["web page"]["ok"]
    assert "OPENBDR-GUEST-READY" in rep["console_tail"]
    assert "marker=drill-marker-7" in rep["console_tail"]
    assert rep["rto_first_s"] is not None and rep["rto_all_s"] >= rep["rto_first_s"]
    assert {c["type"] for c in rep["checks"]} >= {"bootsector", "fsck"}

    # the report is in the repository: `drill report` needs nothing else
    html = tmp_path / "r.html"
    png = tmp_path / "s.png"
    shown = openbdr(
        "drill", "report", "--repo", repo, rep["id"], "--html", str(html), "--screenshot", str(png)
    ).stdout
    assert "PASSED" in shown and "web page" in shown
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 640
        lit = sum(1 for px in im.convert("L").getdata() if px > 128)
        assert lit > 2000, "the console screenshot is blank"
    page = html.read_text()
    assert 'id="verdict" class="passed"' in page
    b64 = page.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(b64) == png.read_bytes()

    _chromium_shows_the_screenshot(html, png, tmp_path)

    pts = json.loads(openbdr("points", "--repo", repo, "--host", "web1", "--json").stdout)
    assert pts[0]["status"] == "verified"
    manifest = json.loads(next(Path(repo, "points", "web1").glob("*.json")).read_text())
    assert manifest["drill"]["id"] == rep["id"] and manifest["verified_at"]


def _failed_drill(
    tmp_path: Path, img: Path, host: str, drill_env: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """Sync `img` as `host`, drill it with the quick plan; the drill must fail (exit 3)."""
    repo = _repo_with(tmp_path, img, host)
    plan = tmp_path / "plan.toml"
    plan.write_text(QUICK_PLAN)
    proc = openbdr("drill", "run", "--repo", repo, "--host", host, "--plan", str(plan),
                   "--json", check=False, env=drill_env, timeout=600)
    assert proc.returncode == 3, proc.stderr
    return repo, dict(json.loads(proc.stdout))


def test_wiped_boot_sector_fails_before_boot(
    boot_disk: Path, tmp_path: Path, drill_env: dict[str, str]
) -> None:
    img = tmp_path / "wiped.img"
    subprocess.run(["cp", "--sparse=always", str(boot_disk), str(img)], check=True)
    with open(img, "r+b") as f:
        f.write(bytes(512))
    repo, rep = _failed_drill(tmp_path, img, "wiped", drill_env)
    assert rep["verdict"] == "failed"
    assert "boot signature" in rep["reason"]
    pts = json.loads(openbdr("points", "--repo", repo, "--host", "wiped", "--json").stdout)
    assert pts[0]["status"] == "ok"


def test_damaged_superblock_fails_with_the_file_system_named(
    boot_disk: Path, tmp_path: Path, drill_env: dict[str, str]
) -> None:
    img = tmp_path / "badsb.img"
    subprocess.run(["cp", "--sparse=always", str(boot_disk), str(img)], check=True)
    with open(img, "r+b") as f:
        f.seek((1 << 20) + 1024)  # partition 1 at sector 2048; primary superblock at +1024
        f.write(bytes(1024))
    _, rep = _failed_drill(tmp_path, img, "badsb", drill_env)
    assert rep["verdict"] == "failed"
    assert "volume 1" in rep["reason"], rep["reason"]
    bad = [c for c in rep["checks"] if not c["ok"]]
    assert bad and bad[0]["type"] in ("layout", "fsck")


def test_killed_runner_is_cleaned_up_by_the_next_run(
    boot_disk: Path, tmp_path: Path, drill_env: dict[str, str]
) -> None:
    repo = _repo_with(tmp_path, boot_disk, "web1")
    plan = tmp_path / "plan.toml"
    plan.write_text(
        QUICK_PLAN.replace('"none"', '"probes"') + '\n[[probe]]\ntype = "tcp"\nport = 80\n'
    )
    runner = subprocess.Popen(
        [*OPENBDR, "drill", "run", "--repo", repo, "--host", "web1", "--plan", str(plan)],
        env=drill_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = Path(drill_env["OPENBDR_STATE_DIR"]) / "drills"
    deadline = time.monotonic() + 120
    rec: dict[str, object] = {}
    while time.monotonic() < deadline:  # wait until QEMU runs under the drill
        recs = list(state.glob("*.json")) if state.exists() else []
        if recs:
            rec = json.loads(recs[0].read_text())
            if len([s for s in rec["steps"] if s[0] == "pid"]) >= 2:  # FUSE server and QEMU
                break
        time.sleep(0.2)
    pids = [s[1][0] for s in rec.get("steps", []) if s[0] == "pid"]  # type: ignore[attr-defined]
    assert len(pids) >= 2, rec
    runner.send_signal(signal.SIGKILL)
    runner.wait(30)
    time.sleep(1)
    for pid in pids:  # FUSE server and QEMU outlive their runner (QEMU dies with it by
        assert _running(pid) or pid == pids[-1]  # PDEATHSIG, the FUSE server does not) …
    out = openbdr("drill", "cleanup", env=drill_env).stdout
    assert "cleaned 1" in out
    assert not any(_running(p) for p in pids)  # … until the sweep


def test_sigterm_tears_down_and_reports_the_interruption(
    boot_disk: Path, tmp_path: Path, drill_env: dict[str, str]
) -> None:
    repo = _repo_with(tmp_path, boot_disk, "web1")
    plan = tmp_path / "plan.toml"
    plan.write_text(QUICK_PLAN)
    runner = subprocess.Popen(
        [*OPENBDR, "drill", "run", "--repo", repo, "--host", "web1", "--plan", str(plan)],
        env=drill_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = Path(drill_env["OPENBDR_STATE_DIR"]) / "drills"
    deadline = time.monotonic() + 120
    pids: list[int] = []
    while time.monotonic() < deadline and len(pids) < 2:
        for rec in state.glob("*.json") if state.exists() else []:
            steps = json.loads(rec.read_text())["steps"]
            pids = [s[1][0] for s in steps if s[0] == "pid"]
        time.sleep(0.2)
    assert len(pids) >= 2, "QEMU never started"
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(60) != 0
    assert not any(_running(p) for p in pids)
    assert not list(state.glob("*.json"))
    rep = json.loads(openbdr("drill", "list", "--repo", repo, "--json").stdout)
    assert rep[-1]["verdict"] == "error"
    # drill_env's teardown checks that nothing else was left behind


PG_PLAN = """
[drill]
memory = 512
network = "probes"

[[probe]]
type = "console"
pattern = "OPENBDR-GUEST-READY"
timeout = 600

[[probe]]
type = "sql"
name = "postgres answers"
port = 5432
query = "select datname from pg_database where datname = 'postgres'"
expect = "postgres"
timeout = 120

[[probe]]
type = "shell"
name = "cluster is the restored one"
command = "cat /data/marker.txt"
expect = "pg-drill"
"""


def test_bootable_postgres_server_answers_a_sql_probe(
    tmp_path: Path, drill_env: dict[str, str]
) -> None:
    img = tmp_path / "pg.img"
    proc = subprocess.run(
        [str(MAKE_DISK), str(img), "--with-postgres", "--marker", "pg-drill"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    repo = _repo_with(tmp_path, img, "pg1")
    img.unlink()  # the drill needs only the repository
    plan = tmp_path / "plan.toml"
    plan.write_text(PG_PLAN)
    out = openbdr(
        "drill",
        "run",
        "--repo",
        repo,
        "--host",
        "pg1",
        "--plan",
        str(plan),
        "--json",
        env=drill_env,
        timeout=1200,
    )
    rep = json.loads(out.stdout)
    assert rep["verdict"] == "passed", rep
    sql = next(p for p in rep["probes"] if p["name"] == "postgres answers")
    assert sql["ok"] and "'postgres'" in sql["detail"]

"""The repository fuzzer of issue 18: damage one object, run every command, check that the
damage stays contained.

A pristine repository holds two hosts' points (and a leftover checkpoint, scrub state and
gc intents). Each trial copies it, damages one object (bit flip, truncation, deletion,
garbage of the right type, another object of the same kind in its place, a newer format
version) and runs `points`, `verify`, `restore` of every point, `sync`, `forget` and `gc`
in this process through `openbdr.cli.run`. It records every violation of the contract:
a traceback or internal error, an exit code outside the table, wrong bytes restored, or
collateral loss (a point that does not depend on the damaged object no longer lists,
verifies or restores identically).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from openbdr import cli
from openbdr.blocks import BLOCK_SIZE
from openbdr.store.index import DiskIndex
from openbdr.store.objects.layout import chunk_id_from_key

TABLE = {0, 1, 2, 3, 4, 5, 6, 7}
KINDS = ("config", "manifest", "index", "chunk", "checkpoint", "scrub", "gc", "lease")


def openbdr(*args: str) -> tuple[int, str, str]:
    """One command in this process: (exit code, stdout, stderr)."""
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = cli.run(list(args))
    return code, o.getvalue(), e.getvalue()


@dataclass
class Pristine:
    root: Path
    images: dict[str, Path]
    #: (host, point id) -> the bytes each point must restore
    expected: dict[tuple[str, str], bytes]


def _write(img: Path, rng: random.Random, blocks: int) -> None:
    with img.open("r+b") as f:
        for _ in range(blocks):
            f.seek(rng.randrange(img.stat().st_size // BLOCK_SIZE) * BLOCK_SIZE + rng.randrange(4096))
            f.write(rng.randbytes(rng.randrange(1, 70_000)))


def build(where: Path) -> Pristine:
    rng = random.Random(18)
    repo = where / "pristine"
    code, _, err = openbdr("repo", "init", str(repo))
    assert code == 0, err
    images = {}
    expected: dict[tuple[str, str], bytes] = {}
    for host, syncs in (("h1", 3), ("h2", 2), ("h3", 1)):
        img = where / f"{host}.img"
        with img.open("wb") as f:
            f.truncate(5 * BLOCK_SIZE + 12345)
        images[host] = img
        for _ in range(syncs):
            _write(img, rng, 3)
            code, out, err = openbdr("sync", "-r", str(repo), "-H", host, "-c", "zstd",
                                     "--all-data", "--json", str(img))
            assert code == 0, err
            expected[(host, json.loads(out)["id"])] = img.read_bytes()
    # gc intents: h3's only point forgotten, its chunks collected
    assert openbdr("forget", "-r", str(repo), "-H", "h3", "--keep-last", "0",
                   "--keep-daily", "0")[0] != 0  # a policy that keeps nothing is refused
    code, _, err = openbdr("forget", "-r", str(repo), "-H", "h3", "--keep-last", "1")
    assert code == 0, err
    for p in list((repo / "points" / "h3").iterdir()):
        p.unlink()  # as a forget of everything would
    expected = {k: v for k, v in expected.items() if k[0] != "h3"}
    assert openbdr("gc", "-r", str(repo), "--margin", "0")[0] == 0
    assert any((repo / "gc" / "intents").iterdir())
    assert openbdr("verify", "-r", str(repo), "--deep")[0] == 0  # scrub state
    # a checkpoint of an unfinished sync of h2
    from openbdr.capture.image import open_host
    from openbdr.store.target import open_target
    from openbdr.sync import SyncOptions, SyncStopped, sync

    _write(images["h2"], rng, 2)
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] > 3

    target = open_target(str(repo))
    with contextlib.suppress(SyncStopped):
        sync(target, open_host("h2", [str(images["h2"])], valid_only=False),
             SyncOptions(checkpoint_every=0.0, should_stop=stop))
    target.close()
    assert any((repo / "checkpoints").rglob("*.index"))
    return Pristine(repo, images, expected)


def objects_of(repo: Path, kind: str) -> list[Path]:
    where = {
        "config": ["config"],
        "manifest": ["points/*/*.json"],
        "index": ["indexes/*/*"],
        "chunk": ["chunks/*/*"],
        "checkpoint": ["checkpoints/*/*"],
        "scrub": ["scrub/*"],
        "gc": ["gc/intents/*"],
        "lease": ["locks/*"],
    }[kind]
    return sorted(p for pat in where for p in repo.glob(pat) if p.is_file())


def dependents(p: Pristine, rel: str) -> set[tuple[str, str]]:
    """The points whose bytes need this object (by its path in the pristine repository)."""
    if rel == "config":
        return set(p.expected)
    parts = rel.split("/")
    if parts[0] == "points":
        return {(parts[1], parts[2].removesuffix(".json"))}
    if parts[0] == "indexes":
        return {k for k in p.expected if k[1] == parts[1]}
    if parts[0] == "chunks":
        cid = chunk_id_from_key(rel)
        out = set()
        for host, point in p.expected:
            for f in (p.root / "indexes" / point).iterdir():
                if cid in DiskIndex.from_bytes(f.read_bytes()).unique_ids():
                    out.add((host, point))
        return out
    return set()


def _uses(repo: Path, point: str, chunk: str) -> bool:
    cid = chunk_id_from_key(chunk)
    return any(cid in DiskIndex.from_bytes(f.read_bytes()).unique_ids()
               for f in (repo / "indexes" / point).iterdir())


JSON_GARBAGE = ["[]", "{}", '"x"', "null", '{"disks": 5}', '{"host": "h1"}', "1e999", "{"]


def damage(repo: Path, kind: str, rng: random.Random) -> tuple[str, str]:
    """Damage one object of `kind`; returns (its path, what was done)."""
    if kind == "lease":  # a leftover lock file of a host, in any state
        target = repo / "locks" / rng.choice(["host-h1.json", "host-h2.json", "maintenance.json"])
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(rng.choice([b"", b"{", b"[]", rng.randbytes(40),
                                       json.dumps({"owner": "x", "expires": 1e12}).encode()]))
        return str(target.relative_to(repo)), "leftover lock"
    victims = objects_of(repo, kind)
    victim = rng.choice(victims)
    rel = str(victim.relative_to(repo))
    data = victim.read_bytes()
    how = rng.choice(["flip", "truncate", "delete", "garbage", "swap", "version"])
    if how == "flip" and data:
        b = bytearray(data)
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(b))
    elif how == "truncate" and data:
        victim.write_bytes(data[: rng.randrange(len(data))])
    elif how == "delete":
        victim.unlink()
    elif how == "swap" and len(victims) > 1:
        other = rng.choice([v for v in victims if v != victim])
        victim.write_bytes(other.read_bytes())
    elif how == "version" and data[:1] == b"{":
        try:
            doc = json.loads(data)
            doc["format" if "format" in doc else "version"] = 99
            victim.write_bytes(json.dumps(doc).encode())
        except ValueError:
            victim.write_bytes(data[:-1])
    elif how == "version" and len(data) > 8:
        b = bytearray(data)
        b[4] = (b[4] + 1) % 256  # the version byte after a 4-byte magic
        victim.write_bytes(bytes(b))
    else:
        if data[:1] in (b"{", b"["):
            victim.write_bytes(rng.choice(JSON_GARBAGE).encode())
        else:
            victim.write_bytes(rng.randbytes(len(data)))
        how = "garbage"
    return rel, how


@dataclass
class Tally:
    trials: int = 0
    commands: int = 0
    violations: list[str] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)


def check(run: Callable[..., tuple[int, str, str]], t: Tally, what: str, *args: str,
          ok: set[int] = frozenset({0})) -> tuple[int, str, str]:  # type: ignore[assignment]
    code, out, err = run(*args)
    t.commands += 1
    t.codes[code] = t.codes.get(code, 0) + 1
    text = out + err
    if "Traceback" in text or "internal error" in text:
        t.violations.append(f"{what}: {' '.join(args[:2])}: {err.strip()[-300:]}")
    elif code not in ok:
        t.violations.append(f"{what}: {' '.join(args[:2])} exited {code}: {err.strip()[-200:]}")
    elif code != 0 and len(err.strip().splitlines()) != 1 and args[0] != "verify":
        t.violations.append(f"{what}: {' '.join(args[:2])}: not one line: {err.strip()[:300]}")
    return code, out, err


def upload(local: Path, url: str) -> None:
    """The damaged repository as objects under an S3 prefix (the fixture's gateway)."""
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for f in local.rglob("*"):
        if f.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{f.relative_to(local)}", Body=f.read_bytes())


def trial(
    p: Pristine, where: Path, kind: str, rng: random.Random, t: Tally, s3: str | None = None
) -> None:
    """One damage and every command after it; on `s3` (a fresh s3:// prefix) when given."""
    repo = where / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(p.root, repo)
    rel, how = damage(repo, kind, rng)
    what = f"{kind} {how} {rel}"
    deps = dependents(p, rel)
    safe = set(p.expected) - deps
    t.trials += 1
    r = str(repo)
    if s3:
        upload(repo, s3)
        r = s3
    # a config whose version field now says a newer format is, as far as anyone can
    # tell, a newer repository: exit 2 ("use the release that wrote it"), by the table
    whole = {0, 2, 3} if kind == "config" else {0, 3}
    # points: every point that does not depend on the damage is listed
    code, out, _ = check(openbdr, t, what, "points", "-r", r, "--json", ok=whole)
    if kind != "config":
        listed = {(row["host"], row["id"]) for row in json.loads(out)} if code == 0 else set()
        lost = safe - listed
        if lost:
            t.violations.append(f"{what}: points does not list {sorted(lost)}")
    check(openbdr, t, what, "verify", "-r", r, ok=whole)
    for (host, point), want in sorted(p.expected.items()):
        out_img = where / "out.img"
        out_img.unlink(missing_ok=True)
        code, _, err = check(openbdr, t, what, "restore", "-r", r, "-H", host, "-p", point,
                             "--to", str(out_img), ok={0, 2, 3} if (host, point) in deps else {0})
        if code == 0 and out_img.read_bytes() != want:
            t.violations.append(f"{what}: restore of {host} {point} gave wrong bytes")
        if code != 0 and out_img.exists():
            t.violations.append(f"{what}: failed restore of {point} left {out_img}")
    # the next sync, retention and gc go on (config damage stops everything: exit 3)
    img = p.images["h1"]
    saved = img.read_bytes()
    _write(img, rng, 1)
    stop = whole if kind == "config" else {0}
    code, out, _ = check(openbdr, t, what, "sync", "-r", r, "-H", "h1", "--all-data", "--json",
                         str(img), ok=stop)
    new = json.loads(out)["id"] if code == 0 else None
    fresh = img.read_bytes()
    img.write_bytes(saved)
    check(openbdr, t, what, "forget", "-r", r, "--keep-last", "10", ok=stop)
    # gc deletes nothing while an index a point needs is unreadable: it says so (exit 3)
    check(openbdr, t, what, "gc", "-r", r, "--margin", "0",
          ok=whole if kind in ("config", "index") else {0})
    if kind == "manifest":  # repair rebuilds a manifest from the point's intact indexes
        code, _, err = check(openbdr, t, what, "repo", "repair", "-r", r, ok={0, 3})
        if how not in ("delete", "version") and code != 0:
            t.violations.append(f"{what}: repo repair could not: {err.strip()[-200:]}")
        if how not in ("delete", "version"):
            todo_first = [(k, v) for k, v in p.expected.items() if k in deps]
            for (host, point), want in todo_first:
                out_img = where / "repaired.img"
                out_img.unlink(missing_ok=True)
                code, _, err = openbdr("restore", "-r", r, "-H", host, "-p", point,
                                       "--to", str(out_img))
                if code != 0 or out_img.read_bytes() != want:
                    t.violations.append(f"{what}: repaired {point} does not restore: {err[-200:]}")
    # nothing that did not depend on the damage was lost, gc included
    todo = [(k, v) for k, v in sorted(p.expected.items()) if k in safe]
    if new and kind == "chunk" and s3:
        new = None  # dedup may reuse the damaged chunk: only local copies are inspected here
    if new and not (kind == "chunk" and _uses(repo, new, rel)):  # dedup may reuse the chunk
        todo.append((("h1", new), fresh))
    for (host, point), want in todo:
        out_img = where / "after.img"
        out_img.unlink(missing_ok=True)
        code, _, err = openbdr("restore", "-r", r, "-H", host, "-p", point, "--to", str(out_img))
        t.commands += 1
        if code != 0 or out_img.read_bytes() != want:
            t.violations.append(f"{what}: after gc, {host} {point} does not restore ({err.strip()[-200:]})")

"""Immutable restore points on the real Ceph RGW: S3 Object Lock and a write-only role.

An attacker holding the sync credentials (or even the repository owner's, in compliance
mode) cannot delete or replace a locked point's objects with raw S3 calls, nor can
`forget`/`gc` remove it before its date; after the date, retention and gc remove it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from ..helpers import openbdr, sha256

MIB = 1 << 20
#: the lock period: long enough for the attacks below, short enough to wait it out
LOCK_S = 25.0


def _client(env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _denied(fn: Any, **kw: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        fn(**kw)
    assert exc.value.response["Error"]["Code"] == "AccessDenied", exc.value.response


def _sync_role(ceph: dict[str, str]) -> dict[str, str]:
    """A subuser of the fixture's user with its own keys: the agents' credentials."""
    name = f"sync{uuid.uuid4().hex[:6]}"
    access, secret = f"SYNC{uuid.uuid4().hex[:12].upper()}", uuid.uuid4().hex
    subprocess.run(
        ["radosgw-admin", "subuser", "create", "--uid=fixture", f"--subuser=fixture:{name}",
         "--access=readwrite", "--key-type=s3", f"--access-key={access}",
         f"--secret-key={secret}"],
        check=True, capture_output=True,
    )
    return dict(os.environ, AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret,
                SYNC_PRINCIPAL=f"arn:aws:iam:::user/fixture:{name}")


def test_init_refuses_a_bucket_without_object_lock(ceph: dict[str, str]) -> None:
    bucket = f"t-nolock-{uuid.uuid4().hex[:8]}"
    _client(dict(os.environ)).create_bucket(Bucket=bucket)
    proc = openbdr("repo", "init", f"s3://{bucket}/r", "--object-lock", check=False)
    assert proc.returncode != 0
    assert "does not have Object Lock enabled" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Contents" not in _client(dict(os.environ)).list_objects_v2(Bucket=bucket)
    # a directory has no compliance mode (test_immutable_dir.py covers its lock)
    proc = openbdr("repo", "init", "/tmp/not-s3-" + uuid.uuid4().hex, "--object-lock",
                   "--lock-mode", "compliance", check=False)
    assert proc.returncode != 0 and "cannot lock in compliance mode" in proc.stderr


def test_locked_points_survive_attackers_until_their_date(
    tmp_path: Path, ceph: dict[str, str]
) -> None:
    owner = dict(os.environ)
    sync = _sync_role(ceph)
    bucket = f"t-lock-{uuid.uuid4().hex[:8]}"
    url = f"s3://{bucket}/repo"
    days = f"{LOCK_S / 86400:.8f}"
    openbdr("repo", "init", url, "--object-lock", "--lock-mode", "compliance",
            "--lock-days", days)
    assert _client(owner).get_object_lock_configuration(Bucket=bucket)[
        "ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    openbdr("repo", "sync-policy", url, "--principal", sync["SYNC_PRINCIPAL"], "--apply")

    # two points synced with the write-only credentials (leases, checkpoints, retention)
    image = tmp_path / "disk.img"
    data = bytearray(os.urandom(6 * MIB))
    image.write_bytes(data)
    started = time.time()
    openbdr("sync", "-r", url, "-H", "db1", "--all-data", str(image), env=sync)
    first_sha = sha256(image)
    data[MIB : 2 * MIB] = os.urandom(MIB)
    image.write_bytes(data)
    openbdr("sync", "-r", url, "-H", "db1", "--all-data", str(image), env=sync)
    second_sha = sha256(image)
    points = json.loads(openbdr("points", "-r", url, "--json").stdout)
    first, second = (p["id"] for p in points)

    s3, attacker = _client(owner), _client(sync)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="repo/")["Contents"]]
    chunks = [k for k in listed if k.startswith("repo/chunks/")]
    manifest = f"repo/points/db1/{first}.json"
    index = f"repo/indexes/{first}/0"
    assert chunks and manifest in listed and index in listed
    retention = s3.get_object_retention(Bucket=bucket, Key=manifest)["Retention"]
    assert retention["Mode"] == "COMPLIANCE" and retention["RetainUntilDate"] > datetime.now(UTC)
    for key in chunks:  # every chunk is retained at least as long as the points
        until = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]["RetainUntilDate"]
        assert until.timestamp() >= started + LOCK_S

    # the attacker with the sync credentials: no delete, no delete of a version
    for key in (chunks[0], manifest, index, "repo/config"):
        _denied(attacker.delete_object, Bucket=bucket, Key=key)
        vid = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
        _denied(attacker.delete_object, Bucket=bucket, Key=key, VersionId=vid)
    _denied(attacker.put_object_retention, Bucket=bucket, Key=manifest,
            Retention={"Mode": "COMPLIANCE",
                       "RetainUntilDate": datetime.now(UTC) + timedelta(seconds=2)})
    _denied(attacker.delete_bucket_policy, Bucket=bucket)
    # an overwrite only adds a version: the locked original stays and cannot be deleted,
    # not even by the owner's credentials (compliance mode)
    original = s3.head_object(Bucket=bucket, Key=chunks[0])["VersionId"]
    good = s3.get_object(Bucket=bucket, Key=chunks[0])["Body"].read()
    bad = attacker.put_object(Bucket=bucket, Key=chunks[0], Body=b"ransom")["VersionId"]
    _denied(s3.delete_object, Bucket=bucket, Key=chunks[0], VersionId=original)
    _denied(s3.delete_object, Bucket=bucket, Key=manifest,
            VersionId=s3.head_object(Bucket=bucket, Key=manifest)["VersionId"])
    _denied(s3.delete_object, Bucket=bucket, Key="repo/config",
            VersionId=s3.head_object(Bucket=bucket, Key="repo/config")["VersionId"])
    kept = s3.get_object(Bucket=bucket, Key=chunks[0], VersionId=original)["Body"].read()
    assert kept == good
    s3.delete_object(Bucket=bucket, Key=chunks[0], VersionId=bad)  # the repair

    # forget and gc by the maintenance role before the date: the point is kept
    out = openbdr("forget", "-r", url, "--keep-last", "1").stdout
    assert f"keep   db1 {first}" in out and "locked" in out
    openbdr("gc", "-r", url, "--margin", "0")
    assert [p["id"] for p in json.loads(openbdr("points", "-r", url, "--json").stdout)] == [
        first, second]
    restored = tmp_path / "first.img"
    openbdr("restore", "-r", url, "-H", "db1", "-p", first, "--to", str(restored))
    assert sha256(restored) == first_sha

    # after the date (chunks are retained twice the period): retention removes it
    first_until = datetime.fromisoformat(points[0]["locked_until"]).timestamp()
    assert first_until >= started + LOCK_S
    time.sleep(max(0.0, first_until + LOCK_S + 2 - time.time()))  # chunks: commit + 2N
    # ... but not with the write-only credentials (which say so in one line)
    proc = openbdr("forget", "-r", url, "--keep-last", "1", env=sync, check=False)
    assert proc.returncode != 0 and "could not be removed" in proc.stderr
    assert len(json.loads(openbdr("points", "-r", url, "--json").stdout)) == 2
    out = openbdr("forget", "-r", url, "--keep-last", "1").stdout
    assert f"forget db1 {first}" in out
    gc = json.loads(openbdr("gc", "-r", url, "--margin", "0", "--json").stdout)
    assert gc["deleted"] >= 1 and gc["locked"] == 0
    versions = s3.list_object_versions(Bucket=bucket, Prefix=f"repo/points/db1/{first}")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    restored = tmp_path / "second.img"
    openbdr("restore", "-r", url, "-H", "db1", "-p", second, "--to", str(restored))
    assert sha256(restored) == second_sha
    openbdr("verify", "-r", url, "--deep")


def test_chunk_retention_rule_extends_only_what_the_parent_does_not_cover() -> None:
    """The rule of immutable.py: shared chunks ride on the parent's bound until it runs
    short of this point's date, then every chunk of the point is extended."""
    from openbdr.store.manifest import RestorePoint
    from openbdr.store.memory import MemoryBlobs
    from openbdr.store.objects.immutable import ObjectLock, chunk_bound, iso

    class Recording(MemoryBlobs):
        def __init__(self) -> None:
            super().__init__(f"memory://lock-{uuid.uuid4().hex}", create=True)
            self.retained: dict[str, datetime] = {}

        def retain(self, key: str, mode: str, until: datetime) -> None:
            self.retained[key] = until

    lock = ObjectLock("COMPLIANCE", 100.0)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    old, shared, new = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    blobs = Recording()
    bound = chunk_bound(blobs, lock, t0, {old, shared}, None, set())
    assert bound == t0 + timedelta(seconds=200) and len(blobs.retained) == 2
    parent = RestorePoint("h", "p1", iso(t0), "crash", [], chunks_locked_until=iso(bound))
    # 50 s later: the parent's bound (t0 + 200) covers t + 100: only the new chunk
    blobs.retained.clear()
    t1 = t0 + timedelta(seconds=50)
    b1 = chunk_bound(blobs, lock, t1, {shared, new}, parent, {old, shared})
    assert [k.rsplit("/", 1)[1] for k in blobs.retained] == [new.hex()]
    assert b1 == bound  # min(parent bound, t1 + 200)
    # 150 s later: the bound no longer covers t + 100: every chunk is extended
    blobs.retained.clear()
    child = RestorePoint("h", "p2", iso(t1), "crash", [], chunks_locked_until=iso(b1))
    t2 = t0 + timedelta(seconds=150)
    b2 = chunk_bound(blobs, lock, t2, {shared, new}, child, {shared, new})
    assert len(blobs.retained) == 2 and b2 == t2 + timedelta(seconds=200)
    assert all(u == b2 for u in blobs.retained.values())


def test_governance_lock_is_lifted_only_by_the_maintenance_role(
    tmp_path: Path, ceph: dict[str, str]
) -> None:
    owner, sync = dict(os.environ), _sync_role(ceph)
    bucket = f"t-gov-{uuid.uuid4().hex[:8]}"
    url = f"s3://{bucket}/repo"
    openbdr("repo", "init", url, "--object-lock", "--lock-mode", "governance", "--lock-days", "1")
    openbdr("repo", "sync-policy", url, "--principal", sync["SYNC_PRINCIPAL"], "--apply")
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(2 * MIB))
    openbdr("sync", "-r", url, "-H", "db1", "--all-data", str(image), env=sync)
    (point,) = json.loads(openbdr("points", "-r", url, "--json").stdout)
    assert point["locked_until"]
    s3, attacker = _client(owner), _client(sync)
    key = f"repo/points/db1/{point['id']}.json"
    retention = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]
    assert retention["Mode"] == "GOVERNANCE"
    vid = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
    _denied(attacker.delete_object, Bucket=bucket, Key=key, VersionId=vid,
            BypassGovernanceRetention=True)
    _denied(s3.delete_object, Bucket=bucket, Key=key, VersionId=vid)
    out = openbdr("forget", "-r", url, "--keep-last", "1", "--keep-daily", "0").stdout
    assert "locked" in out
    # the operator's deliberate override (docs/security.md): only with the owner's keys
    s3.delete_object(Bucket=bucket, Key=key, VersionId=vid, BypassGovernanceRetention=True)
    assert json.loads(openbdr("points", "-r", url, "--json").stdout) == []

"""The fake keeps the documented EBS direct API and EC2 semantics the source relies on
(each row of the table in docs/aws.md)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ..fakes.aws import ACCESS_KEY, BLOCK, SECRET_KEY, FakeAWS
from .conftest import discard, image, write

MIB = 1 << 20


def clients(fake: FakeAWS, secret: str = SECRET_KEY) -> tuple[Any, Any]:
    kw: dict[str, Any] = {
        "endpoint_url": fake.url,
        "region_name": fake.account.region,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": secret,
        # no client-side checks: the fake's own bounds are under test
        "config": Config(
            retries={"mode": "standard", "total_max_attempts": 1}, parameter_validation=False
        ),
    }
    return boto3.client("ec2", **kw), boto3.client("ebs", **kw)


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    r = exc.value.response
    return r["Error"]["Code"], str(r.get("Reason", ""))


def test_snapshot_lifecycle_blocks_checksums_and_lineage(fake: FakeAWS, tmp_path: Path) -> None:
    fake.account.completion_delay = 60.0
    acc = fake.account
    a = acc.add_volume(image(tmp_path / "a.img", [(0, MIB), (10 * MIB, 4096)]))
    b = acc.add_volume(image(tmp_path / "b.img", [(0, MIB)], seed=3))
    inst = acc.add_instance([a, b])
    ec2, ebs = clients(fake)
    r = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.id},
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "k", "Value": "v"}]}],
    )
    snaps = {s["VolumeId"]: s for s in r["Snapshots"]}
    assert set(snaps) == {a.id, b.id} and {s["State"] for s in snaps.values()} == {"pending"}
    sa = snaps[a.id]["SnapshotId"]
    with pytest.raises(ClientError) as e:  # only completed snapshots are read
        ebs.list_snapshot_blocks(SnapshotId=sa)
    assert code(e)[0] == "ValidationException"
    acc.advance(61)
    got = ec2.describe_snapshots(SnapshotIds=[sa])["Snapshots"][0]
    assert got["State"] == "completed" and got["Progress"] == "100%"
    assert {"Key": "k", "Value": "v"} in got["Tags"]

    listing = ebs.list_snapshot_blocks(SnapshotId=sa, MaxResults=100)
    assert listing["BlockSize"] == BLOCK and listing["VolumeSize"] == 1
    assert [x["BlockIndex"] for x in listing["Blocks"]] == [0, 1, 20]
    blk = listing["Blocks"][2]
    out = ebs.get_snapshot_block(SnapshotId=sa, BlockIndex=20, BlockToken=blk["BlockToken"])
    data = out["BlockData"].read()
    assert out["DataLength"] == BLOCK == len(data)
    assert out["Checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert out["ChecksumAlgorithm"] == "SHA256"
    with open(tmp_path / "a.img", "rb") as f:
        f.seek(20 * BLOCK)
        assert f.read(BLOCK) == data
    with pytest.raises(ClientError) as e:  # a token is bound to its block
        ebs.get_snapshot_block(SnapshotId=sa, BlockIndex=0, BlockToken=blk["BlockToken"])
    assert code(e) == ("ValidationException", "INVALID_BLOCK_TOKEN")
    few = ebs.list_snapshot_blocks(SnapshotId=sa, MaxResults=5)  # served as 100 (FAQ)
    assert len(few["Blocks"]) == 3
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId=sa, MaxResults=10001)
    assert code(e) == ("ValidationException", "INVALID_PARAMETER_VALUE")

    # the volume changes; the next snapshot of the same volume lists the difference
    write(tmp_path / "a.img", [(30 * MIB, 4096)])
    discard(tmp_path / "a.img", 0, BLOCK)
    r2 = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.id, "ExcludeDataVolumeIds": [b.id]}
    )
    assert [s["VolumeId"] for s in r2["Snapshots"]] == [a.id]
    sa2 = r2["Snapshots"][0]["SnapshotId"]
    acc.advance(61)
    ch = ebs.list_changed_blocks(FirstSnapshotId=sa, SecondSnapshotId=sa2, MaxResults=100)
    by = {c["BlockIndex"]: c for c in ch["ChangedBlocks"]}
    assert sorted(by) == [0, 60]
    assert "SecondBlockToken" not in by[0] and "FirstBlockToken" in by[0]  # gone: zeros now
    assert "FirstBlockToken" not in by[60] and "SecondBlockToken" in by[60]  # new
    sb = snaps[b.id]["SnapshotId"]
    with pytest.raises(ClientError) as e:
        ebs.list_changed_blocks(FirstSnapshotId=sb, SecondSnapshotId=sa2)
    assert code(e) == ("ValidationException", "UNRELATED_SNAPSHOTS")
    ec2.delete_snapshot(SnapshotId=sa)
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId=sa)
    assert code(e) == ("ResourceNotFoundException", "SNAPSHOT_NOT_FOUND")
    # the later snapshot keeps its bytes when the earlier one goes
    blk = ebs.list_snapshot_blocks(SnapshotId=sa2)["Blocks"][0]
    assert (
        ebs.get_snapshot_block(
            SnapshotId=sa2, BlockIndex=blk["BlockIndex"], BlockToken=blk["BlockToken"]
        )["DataLength"]
        == BLOCK
    )


def test_pages_can_be_empty_and_tokens_expire(fake: FakeAWS, tmp_path: Path) -> None:
    fake.ebs.scan_window = 100
    acc = fake.account
    v = acc.add_volume(image(tmp_path / "v.img", [(900 * MIB, MIB)]))
    inst = acc.add_instance([v])
    ec2, ebs = clients(fake)
    sid = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst.id})["Snapshots"][0][
        "SnapshotId"
    ]
    acc.advance(1)
    page = ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
    assert page["Blocks"] == [] and page["NextToken"]  # empty, yet more to come
    start = ebs.list_snapshot_blocks(SnapshotId=sid, StartingBlockIndex=1800, MaxResults=100)
    assert [x["BlockIndex"] for x in start["Blocks"]] == [1800, 1801]
    acc.advance(3601)
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId=sid, NextToken=page["NextToken"])
    assert code(e) == ("ValidationException", "INVALID_PAGE_TOKEN")
    tok = start["Blocks"][0]["BlockToken"]
    ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=1800, BlockToken=tok)  # 1 h: still good
    acc.advance(7 * 86400)
    with pytest.raises(ClientError) as e:
        ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=1800, BlockToken=tok)
    assert code(e) == ("ValidationException", "INVALID_BLOCK_TOKEN")


def test_throttling_errors_and_signatures(fake: FakeAWS, tmp_path: Path) -> None:
    acc = fake.account
    v = acc.add_volume(image(tmp_path / "v.img", [(0, MIB)]))
    acc.add_instance([v])
    ec2, ebs = clients(fake)
    fake.throttle_rate = 1.0
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId="snap-0")
    assert code(e) == ("RequestThrottledException", "ACCOUNT_THROTTLED")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    fake.throttle_rate = 0.0
    fake.ec2_throttle_rate = 1.0
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes()
    assert code(e)[0] == "RequestLimitExceeded"
    fake.ec2_throttle_rate = 0.0
    with pytest.raises(ClientError) as e:
        ec2.describe_instances(MaxResults=2)
    assert code(e)[0] == "InvalidParameterValue"
    bad_ec2, bad_ebs = clients(fake, secret="wrong")
    with pytest.raises(ClientError) as e:
        bad_ec2.describe_volumes()
    assert code(e)[0] == "AuthFailure"
    with pytest.raises(ClientError) as e:
        bad_ebs.list_snapshot_blocks(SnapshotId="snap-0")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

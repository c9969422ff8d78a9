"""Platform `aws`: discovery through the fake, registration, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from openbdr.capture.platform import PlatformError, open_platform
from openbdr.capture.registry import source_type

from ..fakes.aws import GIB, FakeAWS
from .conftest import image

MIB = 1 << 20


def test_discover_pages_instances_with_volumes_root_first(fake: FakeAWS, tmp_path: Path) -> None:
    fake.ec2.pager.cap = 3  # EC2 may answer fewer than MaxResults: follow NextToken
    acc = fake.account
    made = []
    for k in range(7):
        root = acc.add_volume(image(tmp_path / f"r{k}.img", [(0, MIB)]))
        data = acc.add_volume(image(tmp_path / f"d{k}.img", [(0, MIB)]), encrypted=k == 2)
        made.append(
            acc.add_instance(
                [root, data],
                name=f"vm{k}",
                state="stopped" if k == 4 else "running",
                tags={"env": "prod"},
            )
        )
    plat = open_platform("aws", acc.region, fake.credentials(), {"endpoint_url": fake.url})
    assert "7+" in plat.test() or "3+" in plat.test()
    vms = {v.id: v for v in plat.discover()}
    assert set(vms) == {i.id for i in made}
    vm4 = vms[made[4].id]
    assert vm4.name == "vm4" and vm4.power_state == "stopped" and vm4.tags["env"] == "prod"
    assert [d.bus for d in vm4.disks] == ["/dev/xvda (root)", "/dev/xvdb"]
    assert all(d.size == GIB and d.name.startswith("vol-") for d in vm4.disks)
    assert "encrypted" in vms[made[2].id].disks[1].format
    assert plat.vm("vm3").id == made[3].id
    assert fake.calls["ec2:DescribeInstances"] >= 3  # paged


def test_source_spec_is_validated_and_region_endpoint_form(fake: FakeAWS) -> None:
    st = source_type({"type": "aws"})
    with pytest.raises(PlatformError, match=r"platform\.endpoint"):
        st.validate({"type": "aws", "vm": "i-1"})
    with pytest.raises(PlatformError, match="needs `vm`"):
        st.validate({"type": "aws", "platform": {"endpoint": "eu-west-1"}})
    plat = open_platform("aws", f"{fake.account.region}@{fake.url}", fake.credentials())
    assert plat.discover() == []
    with pytest.raises(PlatformError, match="no VM"):
        plat.vm("nothing")


def test_an_assumed_role_is_used_and_its_denials_named(fake: FakeAWS, tmp_path: Path) -> None:
    from .conftest import run_sync, spec

    acc = fake.account
    inst = acc.add_instance([acc.add_volume(image(tmp_path / "v.img", [(0, MIB)]))])
    role = "arn:aws:iam::123456789012:role/openbdr-sync"
    fake.roles[role] = {"ec2:CreateSnapshots"}
    s = spec(fake, inst.id, sts_endpoint_url=fake.url)
    s["platform"]["credentials"]["role_arn"] = role
    from openbdr.capture.registry import open_source

    host = open_source("web1", s)
    with pytest.raises(PlatformError, match="grant ec2:CreateSnapshots"):
        run_sync(tmp_path / "repo", host)  # type: ignore[arg-type]
    assert any(k.startswith("ASIA") for k in fake.callers)  # the role's keys made the calls


def test_a_terminated_or_deleted_instance_is_an_unknown_vm(fake: FakeAWS, tmp_path: Path) -> None:
    from openbdr.capture.platform import UnknownVM

    from .conftest import open_host

    acc = fake.account
    inst = acc.add_instance([acc.add_volume(image(tmp_path / "v.img", [(0, MIB)]))])
    host = open_host(fake, inst.id)
    inst.state = "terminated"
    with pytest.raises(UnknownVM, match="terminated or deleted"):
        host.snapshot(None)
    del acc.instances[inst.id]
    with pytest.raises(UnknownVM):
        host.snapshot(None)
    assert acc.live_snapshots() == []

"""AWS EBS volumes through the EBS direct APIs: an EBS snapshot per restore point.

`ebs://REGION?endpoint=URL&profile=P&role_arn=ARN&prefix=P&poll=S&timeout=S`; credentials
come from the standard chain (environment, shared files, instance role), a profile or an
assumed role: `capture/aws/client.Aws` builds the clients and retries throttling, 5xx and
connection errors with jittered backoff, so every call here is paced and counted there.

An EBS snapshot is built, not frozen (volumes.py has the design): the live volume is the
newest completed snapshot (the head) plus one *pending* snapshot started from it
(`StartSnapshot`, `ParentSnapshotId` = head) into which writes go as 512 KiB
`PutSnapshotBlock`s with base64 SHA-256 checksums; `snapshot(name)` tags the pending one
with the point name and `CompleteSnapshot`s it with the count of blocks written, then waits
until EC2 says `completed`. Nothing is kept on the gateway's disk: every snapshot carries
tags, so a restarted gateway finds its volumes again (DescribeSnapshots by tag):

    openbdr:volume  <prefix><volume>      openbdr:seq     order within the volume
    openbdr:size    logical size (bytes)  openbdr:point   the restore point (before completion)
    openbdr:blocks  blocks written into a pending snapshot (updated at each flush)
    openbdr:child   on the head: the pending snapshot started from it
    openbdr:deleted on the head: a deleted point whose snapshot the live volume still
                    starts from (deleted from EC2 once the next snapshot completes)

EBS cancels a pending snapshot left without writes for `Timeout` minutes (started with
the maximum, 72 h): a head whose child is then neither pending nor completed means the
writes since the head are gone, and `lost_writes` says so (the gateway then vouches for
no block of the volume and has the sender send them again).

A pending snapshot found on open is written on (its blocks are durable once acknowledged;
the gateway re-sends what it wrote after its last checkpoint); one already tagged with a
point is completed. Bytes past the logical size are kept zero (a shrink zeroes the tail),
so a grown volume reads zeros there. `direct_source` is None: a drill reads the snapshot
through `read_snapshot` (or creates an EBS volume from it through the AWS platform).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import ClientError

from ...errors import CorruptionError, OpenBDRError, SourceError
from .volumes import SnapshotInfo, Volume, VolumeError, VolumeStore, check_name, register_backend

log = logging.getLogger(__name__)

EBS_BLOCK = 512 * 1024
GIB = 1 << 30
ZERO_EBS = bytes(EBS_BLOCK)
T_VOLUME, T_SIZE, T_SEQ, T_POINT, T_BLOCKS, T_CHILD, T_DELETED = (
    "openbdr:volume",
    "openbdr:size",
    "openbdr:seq",
    "openbdr:point",
    "openbdr:blocks",
    "openbdr:child",
    "openbdr:deleted",
)
#: the point tag of a snapshot completed only because the volume outgrew its pending one
CARRY = "~carry"
#: minutes after which EBS cancels a pending snapshot that sees no write (the maximum)
PENDING_TIMEOUT = 4320


def _gib(size: int) -> int:
    return max(1, -(-size // GIB))


def _b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """AWS failures (already retried where AWS says to retry) as one volume error line."""
    try:
        yield
    except VolumeError:
        raise
    except SourceError as exc:  # a block failed its checksum every time it was read
        raise CorruptionError(f"{what}: {exc.what}", exc.hint) from None
    except OpenBDRError as exc:
        raise VolumeError(f"{what}: {exc.what}", exc.hint) from None


def _read_range(offset: int, length: int, block: Callable[[int], bytes]) -> bytes:
    """Bytes [offset, offset+length) from whole 512 KiB EBS blocks given by `block(i)`."""
    out = bytearray()
    pos = offset
    while pos < offset + length:
        i = pos // EBS_BLOCK
        n = min((i + 1) * EBS_BLOCK, offset + length) - pos
        out += block(i)[pos - i * EBS_BLOCK :][:n]
        pos += n
    return bytes(out)


@dataclass
class _Snap:
    id: str
    name: str
    size: int
    seq: int
    gib: int


@dataclass
class _Pending:
    id: str
    gib: int
    seq: int
    #: blocks written by earlier gateway processes (the `openbdr:blocks` tag)
    counted: int = 0
    #: blocks written since this process started writing it
    written: set[int] = field(default_factory=set)
    tagged: int = -1
    point: str | None = None

    @property
    def count(self) -> int:
        return self.counted + len(self.written)


class EbsVolume(Volume):
    def __init__(self, store: EbsStore, name: str, size: int | None) -> None:
        self.store = store
        self.name = name
        self.aws = store.aws
        self.tag = store.prefix + name
        self._lock = threading.RLock()
        self.snaps: list[_Snap] = []
        self.pending: _Pending | None = None
        #: the completed snapshot the live volume (and the pending one) starts from
        self.head: _Snap | None = None
        self._size = 0
        #: blocks of the pending snapshot written partially: their whole content
        self._partial: dict[int, bytes] = {}
        self._head_blocks: set[int] | None = None
        self._readers: dict[str, Any] = {}
        #: head snapshots deleted as points, kept until the next snapshot completes
        self._retired: list[str] = []
        self._lost = False
        #: why this volume refuses work until the gateway restarts (a snapshot failed)
        self._broken: str | None = None
        self._load(size)

    # -- state from tags ---------------------------------------------------------------
    def _load(self, size: int | None) -> None:
        done: list[_Snap] = []
        retired: list[_Snap] = []
        children: dict[str, str] = {}
        pend: list[tuple[dict[str, Any], dict[str, str]]] = []
        for s in self.store.describe([{"Name": f"tag:{T_VOLUME}", "Values": [self.tag]}]):
            tags = {t["Key"]: t["Value"] for t in s.get("Tags", [])}
            state = s.get("State")
            sid = s["SnapshotId"]
            if state == "completed" and T_POINT in tags:
                snap = _Snap(
                    sid,
                    tags[T_POINT],
                    int(tags.get(T_SIZE, 0)),
                    int(tags.get(T_SEQ, 0)),
                    int(s["VolumeSize"]),
                )
                (retired if T_DELETED in tags else done).append(snap)
                if T_CHILD in tags:
                    children[sid] = tags[T_CHILD]
            elif state == "pending":
                pend.append((s, tags))
            else:
                log.warning("EBS volume %s: snapshot %s is %s: ignored", self.name, sid, state)
        self.snaps = sorted(done, key=lambda s: s.seq)
        heads = sorted(done + retired, key=lambda s: s.seq)
        self.head = heads[-1] if heads else None
        self._retired = [s.id for s in retired if s is not self.head]
        if self.head is not None:
            self._size = self.head.size
            child = children.get(self.head.id)
            self._lost = child is not None and child not in {p[0]["SnapshotId"] for p in pend}
            if self._lost:
                log.warning(
                    "EBS volume %s: pending snapshot %s is gone (cancelled by EBS?): the "
                    "writes since snapshot %s are lost",
                    self.name,
                    child,
                    self.head.id,
                )
        if pend:
            s, tags = max(pend, key=lambda p: int(p[1].get(T_SEQ, 0)))
            for other, _ in pend:
                if other is not s:
                    log.warning(
                        "EBS volume %s: stray pending snapshot %s", self.name, other["SnapshotId"]
                    )
            self.pending = _Pending(
                s["SnapshotId"],
                int(s["VolumeSize"]),
                int(tags.get(T_SEQ, 0)),
                counted=int(tags.get(T_BLOCKS, 0)),
                point=tags.get(T_POINT),
            )
            self.pending.tagged = self.pending.counted
            self._size = int(tags.get(T_SIZE, self._size))
            if self.pending.point is not None:  # killed between tagging and completion
                self._complete(hidden=T_DELETED in tags)
        if self.head is None and self.pending is None:
            if size is None:
                raise VolumeError(f"EBS volume {self.name} does not exist")
            self._size = size
            self._start()  # the volume exists from now on (listed by its tag)

    def lost_writes(self) -> bool:
        return self._lost

    # -- pending snapshot ----------------------------------------------------------------
    def _start(self, size: int = 0) -> _Pending:
        """The pending snapshot writes go to (started from the head when there is none),
        large enough for `size` bytes too."""
        if self._broken:
            raise VolumeError(
                self._broken, "restart the gateway: it then has the blocks sent again"
            )
        with self._lock:
            if self.pending is not None:
                return self.pending
            seq = max([s.seq for s in self.snaps] + [self.head.seq if self.head else 0]) + 1
            gib = max(_gib(max(self._size, size)), self.head.gib if self.head else 1)
            kw: dict[str, Any] = {
                "VolumeSize": gib,
                "ClientToken": str(uuid.uuid4()),  # one token across retries: one snapshot
                "Timeout": PENDING_TIMEOUT,
                "Description": f"openbdr volume {self.name}",
                "Tags": [
                    {"Key": T_VOLUME, "Value": self.tag},
                    {"Key": T_SIZE, "Value": str(self._size)},
                    {"Key": T_SEQ, "Value": str(seq)},
                    {"Key": T_BLOCKS, "Value": "0"},
                ],
            }
            if self.head is not None:
                kw["ParentSnapshotId"] = self.head.id
            with _errors(f"EBS volume {self.name}"):
                r = self.aws.call(self.aws.ebs, "start_snapshot", f"volume {self.name}", **kw)
            if self.head is not None:  # a restart that finds neither child knows writes are lost
                self._tag(self.head.id, {T_CHILD: r["SnapshotId"]})
            self.pending = _Pending(r["SnapshotId"], gib, seq, tagged=0)
            return self.pending

    def _tag(self, snap_id: str, tags: dict[str, str]) -> None:
        with _errors(f"EBS volume {self.name}"):
            self.aws.call(
                self.aws.ec2,
                "create_tags",
                snap_id,
                Resources=[snap_id],
                Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
            )

    def _head_set(self) -> set[int]:
        """Indexes of the blocks the head snapshot holds (absent blocks read as zero)."""
        if self._head_blocks is None:
            if self.head is None:
                self._head_blocks = set()
            else:
                from ...capture.aws.blocks import list_blocks

                got: set[int] = set()
                with _errors(f"EBS snapshot {self.head.id} of volume {self.name}"):
                    for page in list_blocks(self.aws, self.head.id):
                        got.update(e.index for e in page)
                self._head_blocks = got
        return self._head_blocks

    def _reader(self, snap: _Snap) -> Any:
        with self._lock:
            r = self._readers.get(snap.id)
            if r is None:
                from ...capture.aws.blocks import BlockReader

                r = self._readers[snap.id] = BlockReader(
                    self.aws, snap.id, snap.gib * GIB // EBS_BLOCK, self.store.pool
                )
            return r

    def _put(self, i: int, data: bytes) -> None:
        p = self._start()
        if i >= p.gib * GIB // EBS_BLOCK:
            raise VolumeError(f"EBS volume {self.name}: block {i} is past its snapshot's size")
        with _errors(f"EBS volume {self.name}"):
            self.aws.call(
                self.aws.ebs,
                "put_snapshot_block",
                f"block {i} of {p.id}",
                SnapshotId=p.id,
                BlockIndex=i,
                BlockData=data,
                DataLength=EBS_BLOCK,
                Checksum=_b64sha(data),
                ChecksumAlgorithm="SHA256",
            )
        with self._lock:
            p.written.add(i)

    def _live_block(self, i: int) -> bytes:
        """The current content of EBS block `i` (for a partial write)."""
        with self._lock:
            hit = self._partial.get(i)
            p = self.pending
            if hit is not None:
                return hit
            if p is not None and i in p.written:
                raise VolumeError(
                    f"EBS volume {self.name}: block {i} of the pending snapshot {p.id} cannot be "
                    "read back (the EBS direct APIs read completed snapshots only)",
                    "write whole 512 KiB blocks",
                )
        if self.head is None or i not in self._head_set():
            return ZERO_EBS
        with _errors(f"EBS volume {self.name}"):
            return bytes(self._reader(self.head).fetch(i))

    def _write(self, offset: int, data: bytes | memoryview | None, length: int) -> None:
        """Write `data` (None: zeros) at `offset`, in whole 512 KiB EBS blocks."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise VolumeError(f"volume {self.name}: write past its end ({offset}+{length})")
        if data is not None:
            data = memoryview(data).cast("B")
        pos = offset
        end = offset + length
        while pos < end:
            i = pos // EBS_BLOCK
            start = i * EBS_BLOCK
            n = min(start + EBS_BLOCK, end) - pos
            piece = bytes(n) if data is None else bytes(data[pos - offset : pos - offset + n])
            keep = max(0, min(start + EBS_BLOCK, self.size) - start)  # bytes inside the volume
            whole = pos == start and (n == EBS_BLOCK or pos + n >= start + keep)
            if whole:
                block = piece.ljust(EBS_BLOCK, b"\0")
                partial = n < EBS_BLOCK
            else:
                cur = bytearray(self._live_block(i))
                cur[pos - start : pos - start + n] = piece
                cur[keep:] = bytes(EBS_BLOCK - keep)
                block = bytes(cur)
                partial = True
            skip = False
            if data is None and block == ZERO_EBS:
                with self._lock:
                    p = self.pending
                    written = p is not None and i in p.written
                skip = not written and (self.head is None or i not in self._head_set())
            if not skip:
                self._put(i, block)
            with self._lock:
                if partial and not skip:
                    self._partial[i] = block
                else:
                    self._partial.pop(i, None)
            pos += n

    def _wait(self, snap_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.store.timeout
        while True:
            try:
                got = self.store.describe(ids=[snap_id])
            except VolumeError as exc:
                if "does not exist" not in exc.what:  # translate()'s line for *.NotFound
                    raise
                got = []
            s = got[0] if got else {}
            state = s.get("State")
            if state == "completed":
                return s
            if state == "error" or not got:
                # the blocks acknowledged into it are gone: refuse every write until a
                # restart, whose open reports them lost (the gateway has them sent again)
                self._broken = (
                    f"EBS snapshot {snap_id} of volume {self.name} failed ({state or 'gone'}): "
                    f"{s.get('StateMessage', '')}".rstrip(": ")
                )
                raise VolumeError(
                    self._broken, "the previous points are intact; restart the gateway and sync"
                )
            if time.monotonic() > deadline:
                raise VolumeError(
                    f"EBS snapshot {snap_id} of volume {self.name} is still {state} after "
                    f"{self.store.timeout:.0f} s",
                    "raise ?timeout= or look at the snapshot in the AWS console",
                )
            time.sleep(self.store.poll)

    def _complete(self, hidden: bool = False) -> _Snap:
        """Complete the pending snapshot (tagged with its point already); `hidden`: a
        carry snapshot, the head of the live volume but no point (deleted after the next)."""
        p = self.pending
        assert p is not None and p.point is not None
        with _errors(f"EBS volume {self.name}"):
            try:
                self.aws.call(
                    self.aws.ebs,
                    "complete_snapshot",
                    p.id,
                    give_back=("INVALID_SNAPSHOT_ID",),
                    SnapshotId=p.id,
                    ChangedBlocksCount=p.count,
                )
            except ClientError:  # completed by a gateway killed right after: it completes
                log.info("EBS snapshot %s: completion already under way", p.id)
        self._wait(p.id)
        snap = _Snap(p.id, p.point, self._size, p.seq, p.gib)
        with self._lock:
            old = self.head
            if not hidden:
                self.snaps.append(snap)
            self.head = snap
            self.pending = None
            self._partial = {}
            self._head_blocks = None
            self._lost = False
            if old is not None and old not in self.snaps:
                self._retired.append(old.id)
            for sid in self._retired:  # deleted points the live volume no longer needs
                self.store.delete_snapshot_id(sid)
                self._readers.pop(sid, None)
            self._retired = []
        return snap

    # -- the contract ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    def resize(self, size: int) -> None:
        if size == self._size:
            return
        if size <= 0:
            raise VolumeError(f"EBS volume {self.name}: size {size} is not positive")
        with self._lock:
            p = self._start(size)
            if _gib(size) > p.gib:  # a pending snapshot cannot grow: carry it into a larger one
                self._tag(p.id, {T_POINT: CARRY, T_DELETED: "1", T_SIZE: str(self._size)})
                p.point = CARRY
                self._complete(hidden=True)
                p = self._start(size)
        old = self._size
        if size < old:  # keep what lies past the end zero: a grown volume reads zeros
            tail = size % EBS_BLOCK
            self._size = old
            try:
                if tail:
                    self._write(size, None, min(EBS_BLOCK - tail, old - size))
                first = -(-size // EBS_BLOCK) * EBS_BLOCK
                if first < old:
                    self._write(first, None, old - first)
            finally:
                self._size = size
        self._size = size
        self._tag(p.id, {T_SIZE: str(size)})

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._write(offset, data, len(data))

    def write_zeroes(self, offset: int, length: int) -> None:
        self._write(offset, None, length)

    def read(self, offset: int, length: int) -> bytes:
        return _read_range(offset, max(0, min(length, self._size - offset)), self._live_block)

    def flush(self) -> None:
        """Acknowledged blocks are durable in the pending snapshot; the count of blocks
        written is recorded on it so that a restarted gateway completes it right."""
        p = self.pending
        if p is not None and p.count != p.tagged:
            count = p.count
            self._tag(p.id, {T_BLOCKS: str(count)})
            p.tagged = count

    def snapshot(self, name: str) -> SnapshotInfo:
        check_name(name, "snapshot")
        with self._lock:
            for s in self.snaps:
                if s.name == name:
                    return SnapshotInfo(s.name, s.size)
            p = self._start()
            self.flush()
            self._tag(p.id, {T_POINT: name, T_SIZE: str(self._size)})
            p.point = name
            snap = self._complete()
        return SnapshotInfo(snap.name, snap.size)

    def snapshots(self) -> list[SnapshotInfo]:
        return [SnapshotInfo(s.name, s.size) for s in self.snaps]

    def delete_snapshot(self, name: str) -> None:
        with self._lock:
            snap = next((s for s in self.snaps if s.name == name), None)
            if snap is None:
                return
            if snap is self.head:  # the live volume starts from it: deleted after the next one
                self._tag(snap.id, {T_DELETED: "1"})
            else:
                self.store.delete_snapshot_id(snap.id)
                self._readers.pop(snap.id, None)
            self.snaps.remove(snap)

    def read_snapshot(self, name: str, offset: int, length: int) -> bytes:
        snap = next((s for s in self.snaps if s.name == name), None)
        if snap is None:
            raise VolumeError(f"volume {self.name} has no snapshot {name}")
        length = max(0, min(length, snap.size - offset))
        reader = self._reader(snap)
        with _errors(f"EBS snapshot {snap.id} ({name}) of volume {self.name}"):
            return _read_range(offset, length, reader.fetch)

    def delete_all(self) -> None:
        ids = [s.id for s in self.snaps] + self._retired
        ids += [x.id for x in (self.head, self.pending) if x is not None and x.id not in ids]
        for sid in ids:
            self.store.delete_snapshot_id(sid)
        self.snaps, self.pending, self.head = [], None, None


class EbsStore(VolumeStore):
    def __init__(self, url: str) -> None:
        from ...capture.aws.client import Aws

        parts = urlsplit(url)
        region = parts.netloc or parts.path.strip("/")
        if not region:
            raise VolumeError(
                f"EBS volume store {url!r} names no region",
                "use ebs://REGION, e.g. ebs://eu-west-1",
            )
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        opts: dict[str, Any] = {}
        for key, opt in (
            ("endpoint", "endpoint_url"),
            ("ebs_endpoint", "ebs_endpoint_url"),
            ("ec2_endpoint", "ec2_endpoint_url"),
            ("sts_endpoint", "sts_endpoint_url"),
            ("profile", "profile"),
            ("role_arn", "role_arn"),
            ("retries", "retries"),
            ("in_flight", "in_flight"),
        ):
            if key in q:
                opts[opt] = q[key]
        with _errors(f"EBS volume store {url}"):
            self.aws = Aws(region, None, opts)
        self.region = region
        self.prefix = q.get("prefix", "")
        self.poll = float(q.get("poll", 2.0))
        self.timeout = float(q.get("timeout", 3600.0))
        self.url = url
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="ebsvol")
        self._open: dict[str, EbsVolume] = {}
        self._lock = threading.Lock()

    def describe(
        self, filters: list[dict[str, Any]] | None = None, ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """DescribeSnapshots of this account, every page."""
        out: list[dict[str, Any]] = []
        kw: dict[str, Any] = {"OwnerIds": ["self"]}
        if filters:
            kw["Filters"] = filters
        if ids:
            kw["SnapshotIds"] = ids
        token = None
        with _errors(f"EBS volume store {self.region}"):
            while True:
                page = self.aws.call(
                    self.aws.ec2,
                    "describe_snapshots",
                    "snapshots",
                    **kw,
                    **({"NextToken": token} if token else {}),
                )
                out += page.get("Snapshots", [])
                token = page.get("NextToken")
                if not token:
                    return out

    def delete_snapshot_id(self, snap_id: str) -> None:
        """EC2 DeleteSnapshot; one that is gone already is no error."""
        try:
            self.aws.call(self.aws.ec2, "delete_snapshot", snap_id, SnapshotId=snap_id)
        except OpenBDRError as exc:
            if "does not exist" not in exc.what:  # translate()'s line for *.NotFound
                raise VolumeError(f"EBS snapshot {snap_id}: {exc.what}", exc.hint) from None

    def open(self, name: str, size: int | None = None) -> Volume:
        check_name(name)
        with self._lock:
            vol = self._open.get(name)
            if vol is None:
                vol = self._open[name] = EbsVolume(self, name, size)
            return vol

    def names(self) -> list[str]:
        found = set()
        for s in self.describe([{"Name": "tag-key", "Values": [T_VOLUME]}]):
            for t in s.get("Tags", []):
                if t["Key"] == T_VOLUME and t["Value"].startswith(self.prefix):
                    found.add(t["Value"][len(self.prefix) :])
        return sorted(found)

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            vol = self._open.pop(name, None)
        if vol is not None:
            vol.delete_all()
        for s in self.describe([{"Name": f"tag:{T_VOLUME}", "Values": [self.prefix + name]}]):
            self.delete_snapshot_id(s["SnapshotId"])

    def close(self) -> None:
        with self._lock:
            self._open = {}
        self.pool.shutdown(wait=False, cancel_futures=True)


register_backend("ebs", EbsStore)

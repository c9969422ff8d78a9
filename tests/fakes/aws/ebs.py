"""The EBS direct APIs (REST + JSON): ListSnapshotBlocks, ListChangedBlocks,
GetSnapshotBlock, and StartSnapshot / PutSnapshotBlock / CompleteSnapshot for writers.

Semantics (docs/aws.md has the table with the AWS pages they come from): 512 KiB blocks;
MaxResults 100–10000; a page scans at most `scan_window` block indexes, so a page can be
empty while a NextToken is present; StartingBlockIndex; NextToken ignores
StartingBlockIndex and expires (`page_token_ttl`, 60 min); block tokens expire
(`block_token_ttl`, 7 days) and are bound to snapshot and index; ListChangedBlocks only
between snapshots of one volume (else ValidationException UNRELATED_SNAPSHOTS), a block
only in the first snapshot has no SecondBlockToken; only `completed` snapshots are read;
GetSnapshotBlock answers with x-amz-Data-Length, x-amz-Checksum (base64 SHA-256) and
x-amz-Checksum-Algorithm; encrypted snapshots need kms:Decrypt on their key.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import secrets
import struct
import threading
from dataclasses import dataclass
from typing import Any

from .state import BLOCK, GIB, Account, Loc, Snap, b64sha


class EbsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400, reason: str | None = None):
        super().__init__(message)
        self.code, self.message, self.status, self.reason = code, message, status, reason

    def body(self) -> bytes:
        doc: dict[str, Any] = {"Message": self.message}
        if self.reason:
            doc["Reason"] = self.reason
        return json.dumps(doc).encode()


def validation(message: str, reason: str) -> EbsError:
    return EbsError("ValidationException", message, 400, reason)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


class EbsApi:
    def __init__(self, account: Account) -> None:
        self.account = account
        self.key = secrets.token_bytes(16)
        #: block indexes scanned per list page at most (pages can be empty with a token)
        self.scan_window = 8192
        self.page_token_ttl = 3600.0
        self.block_token_ttl = 7 * 86400.0
        #: (snapshot id, block index) -> how many more reads return a flipped byte
        self.corrupt: dict[tuple[str, int], int] = {}
        #: the next N GetSnapshotBlock answers, whatever the block, carry a flipped byte
        self.corrupt_next = 0
        self.corrupt_served = 0
        #: ValidationExceptions served for expired or invalid tokens, by Reason
        self.refused: dict[str, int] = {}
        #: access key -> denied IAM actions ("ebs:GetSnapshotBlock", "kms:Decrypt", …)
        self.denied: dict[str, set[str]] = {}
        self._changed_cache: dict[tuple[str, str], list[int]] = {}
        #: snapshot id -> ChangedBlocksCount its CompleteSnapshot gave (AWS's check of it
        #: is undocumented: tests compare it with the blocks written)
        self.changed_counts: dict[str, int] = {}
        #: snapshot id -> block indexes PutSnapshotBlock wrote into it
        self.puts: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    # -- tokens ---------------------------------------------------------------------------
    def _sign(self, payload: bytes) -> str:
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()[:12]
        return base64.b64encode(payload + mac).decode()

    def _unsign(self, token: str) -> bytes | None:
        try:
            raw = base64.b64decode(token, validate=True)
        except Exception:
            return None
        payload, mac = raw[:-12], raw[-12:]
        good = hmac.new(self.key, payload, hashlib.sha256).digest()[:12]
        return payload if hmac.compare_digest(mac, good) else None

    def block_token(self, snap_id: str, index: int, issued: float) -> str:
        return self._sign(b"B" + struct.pack("<qd", index, issued) + snap_id.encode())

    def page_token(self, key: str, nxt: int, issued: float) -> str:
        return self._sign(b"P" + struct.pack("<qd", nxt, issued) + key.encode())

    def _check_block_token(self, snap: Snap, index: int, token: str) -> None:
        payload = self._unsign(token)
        if payload is None or payload[:1] != b"B":
            raise validation("The block token is not valid.", "INVALID_BLOCK_TOKEN")
        idx, issued = struct.unpack("<qd", payload[1:17])
        if payload[17:].decode() != snap.id or idx != index:
            raise validation("The block token is not valid for this block.", "INVALID_BLOCK_TOKEN")
        if self.account.now() > issued + self.block_token_ttl:
            raise validation("The block token has expired.", "INVALID_BLOCK_TOKEN")

    def _page_start(self, key: str, token: str | None, starting: int) -> int:
        if not token:
            return starting
        payload = self._unsign(token)
        if payload is None or payload[:1] != b"P" or payload[17:].decode() != key:
            raise validation("The pagination token is not valid.", "INVALID_PAGE_TOKEN")
        nxt, issued = struct.unpack("<qd", payload[1:17])
        if self.account.now() > issued + self.page_token_ttl:
            raise validation("The pagination token has expired.", "INVALID_PAGE_TOKEN")
        return int(nxt)

    # -- access -------------------------------------------------------------------------
    def _snapshot(self, snap_id: str, access_key: str, action: str) -> Snap:
        denied = self.denied.get(access_key, set())
        if f"ebs:{action}" in denied:
            raise EbsError(
                "AccessDeniedException",
                f"User is not authorized to perform: ebs:{action} on resource: "
                f"arn:aws:ec2:{self.account.region}::snapshot/{snap_id}",
                403,
                "UNAUTHORIZED_ACCOUNT",
            )
        snap = self.account.snapshots.get(snap_id)
        if snap is None or snap.deleted:
            raise EbsError(
                "ResourceNotFoundException",
                f"The snapshot '{snap_id}' does not exist.",
                404,
                "SNAPSHOT_NOT_FOUND",
            )
        if self.account.state_of(snap) != "completed":
            raise validation(
                f"The snapshot '{snap_id}' is not in the completed state.", "INVALID_SNAPSHOT_ID"
            )
        if snap.encrypted and "kms:Decrypt" in denied:
            raise EbsError(
                "AccessDeniedException",
                f"User is not authorized to perform: kms:Decrypt on resource: {snap.kms_key_id}",
                403,
                "DEPENDENCY_ACCESS_DENIED",
            )
        return snap

    @staticmethod
    def _max_results(query: dict[str, str]) -> int:
        raw = query.get("maxResults")
        if raw is None:
            return 10000
        n = int(raw)
        if n > 10000:
            raise validation(
                f"1 validation error detected: Value '{n}' at 'maxResults' failed to satisfy "
                "constraint: Member must have value less than or equal to 10000",
                "INVALID_PARAMETER_VALUE",
            )
        return max(n, 100)  # FAQ: under 100, "the API will return at least 100 results"

    def _page(
        self, indexes: list[int], key: str, query: dict[str, str], nblocks: int
    ) -> tuple[list[int], str | None]:
        """One page of `indexes` (sorted): at most MaxResults, scanning at most a window."""
        limit = self._max_results(query)
        start = self._page_start(
            key, query.get("pageToken"), int(query.get("startingBlockIndex", 0))
        )
        stop = min(start + self.scan_window, nblocks)
        lo = bisect.bisect_left(indexes, start)
        hi = bisect.bisect_left(indexes, stop)
        page = indexes[lo : min(hi, lo + limit)]
        if lo + limit < hi:
            nxt: int | None = page[-1] + 1
        else:
            nxt = stop if stop < nblocks else None
        token = self.page_token(key, nxt, self.account.now()) if nxt is not None else None
        return page, token

    # -- operations ----------------------------------------------------------------------
    def list_snapshot_blocks(self, snap_id: str, query: dict[str, str], akey: str) -> Reply:
        snap = self._snapshot(snap_id, akey, "ListSnapshotBlocks")
        nblocks = snap.volume_size_gib * GIB // BLOCK
        page, token = self._page(sorted(snap.blocks), "L" + snap.id, query, nblocks)
        now = self.account.now()
        doc: dict[str, Any] = {
            "Blocks": [
                {"BlockIndex": i, "BlockToken": self.block_token(snap.id, i, now)} for i in page
            ],
            "ExpiryTime": now + self.block_token_ttl,
            "VolumeSize": snap.volume_size_gib,
            "BlockSize": BLOCK,
        }
        if token:
            doc["NextToken"] = token
        return Reply(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def _changed(self, first: Snap, second: Snap) -> list[int]:
        key = (first.id, second.id)
        with self._lock:
            hit = self._changed_cache.get(key)
        if hit is not None:
            return hit
        out = []
        for i in sorted(set(first.blocks) | set(second.blocks)):
            a: Loc | None = first.blocks.get(i)
            b: Loc | None = second.blocks.get(i)
            if a is None or b is None or a.sha != b.sha:
                out.append(i)
        with self._lock:
            self._changed_cache[key] = out
        return out

    def list_changed_blocks(self, second_id: str, query: dict[str, str], akey: str) -> Reply:
        second = self._snapshot(second_id, akey, "ListChangedBlocks")
        first_id = query.get("firstSnapshotId")
        first = self._snapshot(first_id, akey, "ListChangedBlocks") if first_id else None
        if first is not None and first.volume_id != second.volume_id:
            raise validation(
                f"The snapshots '{first.id}' and '{second.id}' are not of the same lineage.",
                "UNRELATED_SNAPSHOTS",
            )
        nblocks = second.volume_size_gib * GIB // BLOCK
        indexes = self._changed(first, second) if first is not None else sorted(second.blocks)
        page, token = self._page(indexes, f"C{first_id or ''}:{second.id}", query, nblocks)
        now = self.account.now()
        blocks = []
        for i in page:
            item: dict[str, Any] = {"BlockIndex": i}
            if first is not None and i in first.blocks:
                item["FirstBlockToken"] = self.block_token(first.id, i, now)
            if i in second.blocks:
                item["SecondBlockToken"] = self.block_token(second.id, i, now)
            blocks.append(item)
        doc: dict[str, Any] = {
            "ChangedBlocks": blocks,
            "ExpiryTime": now + self.block_token_ttl,
            "VolumeSize": second.volume_size_gib,
            "BlockSize": BLOCK,
        }
        if token:
            doc["NextToken"] = token
        return Reply(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def get_snapshot_block(
        self, snap_id: str, index: int, query: dict[str, str], akey: str
    ) -> Reply:
        snap = self._snapshot(snap_id, akey, "GetSnapshotBlock")
        token = query.get("blockToken")
        if not token:
            raise validation("The block token is required.", "INVALID_BLOCK_TOKEN")
        self._check_block_token(snap, index, token)
        if index not in snap.blocks:
            raise validation(f"The block {index} is not in the snapshot.", "INVALID_BLOCK")
        data, sha = self.account.read_block(snap, index)
        with self._lock:
            left = self.corrupt.get((snap.id, index), 0)
            if left > 0:
                self.corrupt[(snap.id, index)] = left - 1
            elif self.corrupt_next > 0:
                self.corrupt_next -= 1
                left = 1
            if left > 0:
                self.corrupt_served += 1
        if left > 0:  # a bit flipped on the way: the checksum still names the true data
            data = bytes([data[0] ^ 0x55]) + data[1:]
        headers = {
            "Content-Type": "application/octet-stream",
            "x-amz-Data-Length": str(len(data)),
            "x-amz-Checksum": b64sha(sha),
            "x-amz-Checksum-Algorithm": "SHA256",
        }
        return Reply(200, data, headers)

    # -- writers (block mode will use them) ------------------------------------------------
    def start_snapshot(self, doc: dict[str, Any], akey: str) -> Reply:
        size = int(doc.get("VolumeSize", 0))
        if size < 1:
            raise validation("VolumeSize must be at least 1 GiB.", "INVALID_VOLUME_SIZE")
        acc = self.account
        now = acc.now()
        snap = Snap(
            "snap-" + secrets.token_hex(9)[:17],
            volume_id="vol-ffffffff",
            volume_size_gib=size,
            started=now,
            complete_at=float("inf"),
            description=str(doc.get("Description", "")),
            tags={t["Key"]: t.get("Value", "") for t in doc.get("Tags", [])},
            pack=acc.workdir / f"w-{secrets.token_hex(6)}.pack",
        )
        snap.pack.touch()  # type: ignore[union-attr]
        snap.ready.set()
        parent = doc.get("ParentSnapshotId")
        if parent:
            base = self._snapshot(parent, akey, "StartSnapshot")
            snap.blocks = dict(base.blocks)
            snap.volume_id = base.volume_id
        with acc.lock:
            acc.snapshots[snap.id] = snap
        out = {
            "SnapshotId": snap.id,
            "OwnerId": "123456789012",
            "Status": "pending",
            "StartTime": now,
            "VolumeSize": size,
            "BlockSize": BLOCK,
            "Tags": doc.get("Tags", []),
            "ParentSnapshotId": parent,
        }
        return Reply(
            201,
            json.dumps({k: v for k, v in out.items() if v is not None}).encode(),
            {"Content-Type": "application/json"},
        )

    def _writable(self, snap_id: str) -> Snap:
        snap = self.account.snapshots.get(snap_id)
        if snap is None or snap.deleted:
            raise EbsError(
                "ResourceNotFoundException",
                f"The snapshot '{snap_id}' does not exist.",
                404,
                "SNAPSHOT_NOT_FOUND",
            )
        if snap.complete_at != float("inf"):
            raise validation(f"The snapshot '{snap_id}' is not pending.", "INVALID_SNAPSHOT_ID")
        return snap

    def put_snapshot_block(
        self, snap_id: str, index: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        snap = self._writable(snap_id)
        if len(body) != BLOCK or int(headers.get("x-amz-data-length", -1)) != BLOCK:
            raise validation("Blocks are 524288 bytes.", "INVALID_BLOCK")
        sha = hashlib.sha256(body).digest()
        if headers.get("x-amz-checksum") != b64sha(sha):
            raise validation("The checksum does not match the data.", "INVALID_BLOCK")
        assert snap.pack is not None
        with self._lock, open(snap.pack, "ab") as f:
            off = f.tell()
            f.write(body)
        snap.blocks[index] = Loc(snap.pack, off, sha)
        with self._lock:
            self.puts.setdefault(snap_id, set()).add(index)
        return Reply(
            201,
            b"{}",
            {
                "Content-Type": "application/json",
                "x-amz-Checksum": b64sha(sha),
                "x-amz-Checksum-Algorithm": "SHA256",
            },
        )

    def complete_snapshot(self, snap_id: str, headers: dict[str, str]) -> Reply:
        snap = self._writable(snap_id)
        changed = int(headers.get("x-amz-changedblockscount", "0"))
        snap.complete_at = self.account.now() + self.account.completion_delay
        self.changed_counts[snap_id] = changed
        return Reply(
            202, json.dumps({"Status": "pending"}).encode(), {"Content-Type": "application/json"}
        )

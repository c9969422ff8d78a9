"""EBS direct API reads: block listings and many GetSnapshotBlock requests in flight.

EBS blocks are 512 KiB. Listings are paged until NextToken is absent; a page may be empty
while a token is present. An expired NextToken (60 min) makes the listing start again at
the next block index (`StartingBlockIndex`); an expired or refused block token (7 days)
makes the reader look the block up again. Every block read is checked against its
`x-amz-Data-Length` and base64 SHA-256 `x-amz-Checksum`; a mismatch is retried and never
returned.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from ...errors import SourceError
from ...extents import Extent
from ..platform import PlatformError
from .client import Aws, error_reason

log = logging.getLogger(__name__)

EBS_BLOCK = 512 * 1024
#: tokens kept from a listing; past this, blocks are looked up again in windows (memory)
TOKEN_CAP = 1 << 18
#: how many times a block whose checksum fails is read again
CHECKSUM_RETRIES = 5


#: restarts of one listing after expired NextTokens before giving up
MAX_RESTARTS = 20


class PageTokenExpired(Exception):
    """The listing's NextToken is no longer valid (60 min): list again from an index."""


@dataclass
class Entry:
    index: int
    #: block token in the snapshot read (None: the block is absent there: it reads as zero)
    token: str | None


def list_blocks(
    aws: Aws,
    snapshot: str,
    base: str | None = None,
    start: int = 0,
    max_results: int = 10000,
    until: int | None = None,
) -> Iterator[list[Entry]]:
    """Pages of entries from block index `start`: every block of `snapshot`
    (ListSnapshotBlocks), or those that differ from `base` (ListChangedBlocks). Stops
    after the first page reaching `until` when given (a lookup, not a full listing)."""
    token: str | None = None
    nxt = start
    restarts = 0
    while True:
        kw: dict[str, object] = {"MaxResults": max_results}
        if token:
            kw["NextToken"] = token
        else:
            kw["StartingBlockIndex"] = nxt
        try:
            if base is None:
                page = _list_call(aws, "list_snapshot_blocks", snapshot, SnapshotId=snapshot, **kw)
                entries = [Entry(b["BlockIndex"], b["BlockToken"]) for b in page.get("Blocks", [])]
            else:
                page = _list_call(
                    aws,
                    "list_changed_blocks",
                    f"{base}..{snapshot}",
                    FirstSnapshotId=base,
                    SecondSnapshotId=snapshot,
                    **kw,
                )
                entries = [
                    Entry(b["BlockIndex"], b.get("SecondBlockToken"))
                    for b in page.get("ChangedBlocks", [])
                ]
        except PageTokenExpired:
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise PlatformError(
                    f"EBS listing of {snapshot}: NextToken expired {restarts} times",
                    "the listing is too slow for the token lifetime; check the network",
                ) from None
            log.info(
                "%s: the listing's NextToken expired: listing again from block %d", snapshot, nxt
            )
            token = None
            continue
        size = page.get("BlockSize")
        if size is not None and int(size) != EBS_BLOCK:
            raise PlatformError(f"EBS snapshot {snapshot} has {size}-byte blocks, not 512 KiB")
        if entries:
            nxt = entries[-1].index + 1
        yield entries
        token = page.get("NextToken")
        if not token or (until is not None and nxt > until):
            return


def _list_call(aws: Aws, op: str, what: str, **kw: object) -> dict:
    try:
        return aws.call(aws.ebs, op, what, give_back=("INVALID_PAGE_TOKEN",), **kw)
    except ClientError as exc:
        if "NextToken" in kw:
            raise PageTokenExpired() from None
        raise aws.translate(exc, op, what) from None


@dataclass
class Tokens:
    """What is known of one snapshot's blocks: tokens, and ranges known complete."""

    tokens: dict[int, str] = field(default_factory=dict)
    #: [lo, hi) ranges in which every present block is in `tokens` (others are absent)
    known: list[tuple[int, int]] = field(default_factory=list)

    def is_known(self, i: int) -> bool:
        return any(lo <= i < hi for lo, hi in self.known)


class BlockReader:
    """Reads one EBS snapshot's blocks with up to `aws.in_flight` requests in flight,
    fetching ahead along the plan the engine will read."""

    def __init__(self, aws: Aws, snapshot: str, nblocks: int, pool: ThreadPoolExecutor) -> None:
        self.aws = aws
        self.snapshot = snapshot
        self.nblocks = nblocks
        self.pool = pool
        self.tok = Tokens()
        self._lock = threading.RLock()  # futures call back (`_ended`) while it is held
        self._lookup_lock = threading.Lock()
        self._ahead: OrderedDict[int, Future[bytes]] = OrderedDict()
        #: the extents the engine reads next, in order, and the next block to fetch ahead
        self._plan: list[Extent] = []
        self._starts: list[int] = []
        self._next = 0
        self._ei = 0
        #: requests kept running, and blocks held (running + fetched, not yet read): a
        #: block that lags must not stop the others (head-of-line), memory stays bounded
        self.in_flight = aws.in_flight
        self.window = aws.in_flight + aws.in_flight // 2 + 16
        self._running = 0
        self._filling = False
        self.checksum_failures = 0

    # -- what the listing taught -------------------------------------------------------------
    def learn(
        self, entries: Iterable[Entry], complete_from: int | None = None, to: int | None = None
    ) -> None:
        """Keep the tokens of a listing; [complete_from, to) is then known in full (a block
        of it without a token is absent), unless the token cap dropped some."""
        dropped = False
        with self._lock:
            for e in entries:
                if e.token is None:  # gone (a changed list): a lookup says so if read
                    continue
                if len(self.tok.tokens) < TOKEN_CAP or e.index in self.tok.tokens:
                    self.tok.tokens[e.index] = e.token
                else:
                    dropped = True
            if complete_from is not None and to is not None and not dropped:
                self.tok.known.append((complete_from, to))
                del self.tok.known[:-16]

    def plan(self, extents: Iterable[Extent]) -> None:
        """The blocks the engine is about to read, in order: fetched ahead."""
        with self._lock:
            for f in self._ahead.values():
                f.cancel()
            self._ahead.clear()
            self._plan = list(extents)
            self._starts = [e.offset for e in self._plan]
            self._next = 0
            self._ei = 0

    def _planned(self, i: int) -> bool:
        k = bisect.bisect_right(self._starts, i * EBS_BLOCK) - 1
        return k >= 0 and i * EBS_BLOCK < self._plan[k].end

    # -- reads ---------------------------------------------------------------------------------
    def read_into(self, offset: int, buf: memoryview) -> int:
        n = len(buf)
        pos = 0
        while pos < n:
            i = (offset + pos) // EBS_BLOCK
            within = (offset + pos) - i * EBS_BLOCK
            take = min(EBS_BLOCK - within, n - pos)
            data = memoryview(self.block(i))  # a slice of bytes would be one more copy
            buf[pos : pos + take] = data[within : within + take]
            pos += take
        return n

    def block(self, i: int) -> bytes:
        """Block `i`: from the blocks fetched ahead when the engine reads along the plan;
        fetched now otherwise (trust-but-verify samples, the engine's own re-reads)."""
        if not self._planned(i):
            return self.fetch(i)
        with self._lock:
            self._next = max(self._next, i)
            self._fill()
            fut = self._ahead.pop(i, None)
            ahead = self._ahead  # in block order: skipped ones (a resumed sync's) are first
            while ahead and next(iter(ahead)) < i:
                ahead.popitem(last=False)[1].cancel()
            self._fill()
        if fut is not None:
            return fut.result()
        return self.fetch(i)

    def _fill(self) -> None:
        """Keep `in_flight` requests running along the plan after the engine's position,
        within `window` blocks held; called with the lock held, by the engine's thread
        and by every request that ends, so that the pool never waits for the engine."""
        if self._filling:  # re-entered from a request that ended at once: the loop goes on
            return
        self._filling = True
        try:
            self._submit()
        finally:
            self._filling = False

    def _submit(self) -> None:
        plan = self._plan
        while self._running < self.in_flight and len(self._ahead) < self.window:
            while self._ei < len(plan) and plan[self._ei].end <= self._next * EBS_BLOCK:
                self._ei += 1
            if self._ei == len(plan):
                return
            b = max(self._next, plan[self._ei].offset // EBS_BLOCK)
            self._next = b + 1
            self._running += 1
            fut = self.pool.submit(self.fetch, b)
            self._ahead[b] = fut
            fut.add_done_callback(self._ended)

    def _ended(self, _fut: Future[bytes]) -> None:
        with self._lock:
            self._running -= 1
            self._fill()

    def close(self) -> None:
        with self._lock:
            self._plan = []
            for f in self._ahead.values():
                f.cancel()
            self._ahead.clear()

    def _token(self, i: int) -> str | None:
        """The block's token, or None when the block is absent (zeros)."""
        with self._lock:
            tok = self.tok.tokens.get(i)
            if tok is not None:
                return tok
            if self.tok.is_known(i):
                return None
        with self._lookup_lock:  # one lookup at a time: the window serves the neighbours
            with self._lock:
                tok = self.tok.tokens.get(i)
                if tok is not None or self.tok.is_known(i):
                    return tok
            self.lookup(i)
            with self._lock:
                return self.tok.tokens.get(i)

    def lookup(self, i: int) -> None:
        """List the snapshot's blocks from `i` until a page holds some: tokens for `i` and
        the blocks after it, and the knowledge of which are absent."""
        for entries in list_blocks(self.aws, self.snapshot, None, start=i, until=i):
            if entries:
                self.learn(entries, i, entries[-1].index + 1)
                return
        self.learn([], i, self.nblocks)  # nothing from i to the end: all absent

    def fetch(self, i: int) -> bytes:
        tok = self._token(i)
        if tok is None:
            return bytes(EBS_BLOCK)
        what = f"block {i} of {self.snapshot}"
        bad = 0
        while True:
            try:
                r = self.aws.call(
                    self.aws.ebs,
                    "get_snapshot_block",
                    what,
                    give_back=("INVALID_BLOCK_TOKEN",),
                    SnapshotId=self.snapshot,
                    BlockIndex=i,
                    BlockToken=tok,
                )
            except ClientError as exc:  # a refused or expired block token: look it up again
                log.info(
                    "%s: block token refused (%s): looking it up again", what, error_reason(exc)
                )
                with self._lock:
                    if self.tok.tokens.get(i) == tok:  # not refreshed by another thread yet
                        del self.tok.tokens[i]
                        self.tok.known.clear()
                tok = self._token(i)
                if tok is None:
                    return bytes(EBS_BLOCK)
                continue
            try:
                data = r["BlockData"].read()
            except Exception as exc:  # the connection broke mid-body: read it again
                log.info("%s: body read failed (%s): reading it again", what, exc)
                data = b""
            length = int(r.get("DataLength") or -1)
            checksum = r.get("Checksum") or ""
            algo = r.get("ChecksumAlgorithm") or "SHA256"
            good = base64.b64encode(hashlib.sha256(data).digest()).decode()
            if len(data) == length == EBS_BLOCK and algo == "SHA256" and checksum == good:
                return data
            bad += 1
            with self._lock:
                self.checksum_failures += 1
            log.warning(
                "%s: checksum or length mismatch (got %d bytes, DataLength %d): reading it again",
                what,
                len(data),
                length,
            )
            if bad > CHECKSUM_RETRIES:
                raise SourceError(
                    f"EBS {what}: its data failed the checksum {bad} times",
                    "the data is not stored; run the sync again later",
                )
            self.aws.backoff.sleep(bad)

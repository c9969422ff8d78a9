"""Changed-block tracking of one disk from a private tracefs instance.

A reader thread turns every completed write of the disk into dirty 1 MiB blocks in two
sets: the changes of the current generation (what the next incremental sync needs) and the
changes since the last pass cut (what a multi-pass capture re-reads). A cut writes a marker
and waits until the reader has seen it, so every write that completed before the cut is in
the set the cut returns. Lost events never pass silently: they make earlier generations
untrusted, so the next sync is a hash-compare resync.

Cost per write: the reader naps `NAP` seconds between reads, so it wakes a few times a
second whatever the write rate (not once per event), and parses each chunk with one regex
pass; a cut wakes it at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

from ...blocks import BLOCK_SIZE
from ...errors import SourceError
from .bitmap import DirtyBitmap, TrackState
from .devices import BlockDevice, boot_id
from .tracefs import Instance, kernel_dev, parse, write_filter

log = logging.getLogger(__name__)

SECTOR = 512
#: granularity of the page masks kept during a capture (O_DIRECT-aligned)
PAGE = 4096
PAGES_PER_BLOCK = BLOCK_SIZE // PAGE
#: seconds the reader waits between reads (events wait in the kernel's ring meanwhile)
NAP = 0.1


def instance_name(state_dir: Path, dev: BlockDevice) -> str:
    """Stable per (agent state directory, device), so a restarted agent finds its instance."""
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"openbdr-{tag}-{dev.major}_{dev.minor}"


class DiskTracker:
    """Dirty blocks of one block device since the last cut, and per generation."""

    def __init__(
        self,
        dev: BlockDevice,
        state_dir: Path,
        buffer_kb: int = 4096,
        tracefs_root: Path | None = None,
    ) -> None:
        self.dev = dev
        self.state_path = state_dir / f"{dev.name}.track"
        self.instance = Instance(instance_name(state_dir, dev), tracefs_root)
        self.buffer_kb = buffer_kb
        self.lock = threading.Condition()
        self.state: TrackState | None = None
        self.pass_bits = DirtyBitmap(dev.size)
        #: while a capture runs: block -> mask of its 4 KiB pages written since the last cut
        #: (a block staged whole is re-copied page by page, not whole)
        self.pass_pages: dict[int, int] = {}
        #: the page masks of the blocks the last cut (or peek) returned
        self.cut_pages: dict[int, int] = {}
        self._fine = False
        #: why this run started a new tracking session (None: continued the saved one)
        self.start_reason: str | None = None
        self.events = 0
        self.written_bytes = 0
        self._marker = 0
        self._seen = 0
        self._rest = b""
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        bid = boot_id()
        st = TrackState.load(self.state_path)
        reason = None
        if st is None:
            reason = "no saved tracking state"
        elif st.boot_id != bid:
            reason = "the host rebooted since the last sync"
        elif not st.clean:
            reason = "the agent did not stop cleanly"
        elif st.size != self.dev.size or st.device != self.dev.path:
            reason = "the device changed"
        elif not self.instance.exists():
            reason = "the tracing instance is gone"
        elif self.instance.lost() != st.lost_seen:
            reason = "write events were lost while the agent was stopped"
        if reason is not None:
            if self.instance.exists():
                self.instance.remove()
            self.instance.create(self._filter(), self.buffer_kb)
            st = TrackState(size=self.dev.size, device=self.dev.path, boot_id=bid)
            log.info("%s: new tracking session (%s)", self.dev.path, reason)
        assert st is not None
        st.clean = False
        st.save(self.state_path)
        self.state = st
        self.start_reason = reason
        self.instance.open_pipe()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"track-{self.dev.name}", daemon=True
        )
        self._thread.start()

    def _filter(self) -> str:
        kdev = kernel_dev(self.dev.disk_major, self.dev.disk_minor)
        if not self.dev.is_partition:
            return write_filter(kdev)
        first = self.dev.start // SECTOR
        return write_filter(kdev, first, first + self.dev.size // SECTOR)

    def stop(self) -> None:
        """Drain, save the state as clean and leave the instance recording for the next run."""
        if self._thread is None:
            return
        try:
            self._drain()
        except SourceError as exc:
            log.warning("%s: %s", self.dev.path, exc)
            self._halt()
            return
        self._halt()
        with self.lock:
            assert self.state is not None
            self.state.clean = True
            self.state.lost_seen = self.instance.lost()
            self.state.save(self.state_path)

    def _halt(self) -> None:
        self._stop.set()
        self._hurry.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.instance.close()

    def release(self) -> None:
        """Stop tracking for good: remove the instance and the saved state."""
        self._halt()
        self.instance.remove()
        self.state_path.unlink(missing_ok=True)

    # -- reader thread ----------------------------------------------------------------
    def _run(self) -> None:
        last_check = 0.0
        try:
            while not self._stop.is_set():
                data = self.instance.read(0.2)
                if data:
                    self._feed(data)
                now = time.monotonic()
                if now - last_check >= 1.0:
                    last_check = now
                    self._check_lost(cut=False)
                if self._hurry.wait(NAP):
                    self._hurry.clear()
        except BaseException as exc:  # surfaced at the next cut
            log.exception("%s: change tracking failed", self.dev.path)
            with self.lock:
                self._error = exc
                if self.state is not None:
                    self.state.valid_from = self.state.gen + 2
                self.lock.notify_all()

    def _feed(self, data: bytes) -> None:
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        writes, marker = parse(data[:cut])
        base = self.dev.start // SECTOR
        blocks: set[int] = set()
        pages: dict[int, int] = {}
        nbytes = 0
        fine = self._fine
        for (sector, count), k in writes.items():
            off = (sector - base) * SECTOR
            end = off + count * SECTOR
            nbytes += k * count * SECTOR
            if end <= 0:  # the filter also passes requests just before a partition
                continue
            blocks.update(range(max(0, off) // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1))
            if fine:
                _mark_pages(pages, max(0, off) // PAGE, (end - 1) // PAGE)
        with self.lock:
            assert self.state is not None and self.state.current is not None
            self.state.current.add_all(blocks)
            self.pass_bits.add_all(blocks)
            if self._fine:
                mine = self.pass_pages
                for b, m in pages.items():
                    mine[b] = mine.get(b, 0) | m
            self.events += writes.total()
            self.written_bytes += nbytes
            if marker >= 0:
                self._seen = max(self._seen, marker)
            self.lock.notify_all()

    def _check_lost(self, cut: bool) -> None:
        lost = self.instance.lost()
        with self.lock:
            st = self.state
            assert st is not None
            if lost > st.lost_seen:
                st.lost_seen = lost
                # unread events belong to the current generation, or during a cut maybe the next
                st.valid_from = max(st.valid_from, st.gen + (2 if cut else 1))
                log.warning(
                    "%s: the kernel lost write events: next sync is a resync", self.dev.path
                )

    # -- cuts -------------------------------------------------------------------------
    def _drain(self, timeout: float = 30.0) -> None:
        """Return once every write that completed before this call is in the sets."""
        with self.lock:
            self._marker += 1
            n = self._marker
        self.instance.mark(f"openbdr-cut-{n}")
        self._hurry.set()
        deadline = time.monotonic() + timeout
        with self.lock:
            while self._seen < n:
                if self._error is not None:
                    raise SourceError(f"{self.dev.path}: change tracking failed ({self._error})")
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    raise SourceError(
                        f"{self.dev.path}: the change tracker did not drain in {timeout:.0f} s",
                        "check the agent's load; the next sync will resync",
                    )
                self.lock.wait(left)
        self._check_lost(cut=True)

    def pass_cut(self) -> DirtyBitmap:
        """Blocks written since the previous cut (their pages in `cut_pages`); starts a new
        pass set."""
        self._drain()
        with self.lock:
            out, self.pass_bits = self.pass_bits, DirtyBitmap(self.dev.size)
            self.cut_pages, self.pass_pages = self.pass_pages, {}
            return out

    def final_cut(self) -> tuple[DirtyBitmap, int]:
        """Like `pass_cut`, and closes the generation (and the capture's page masks);
        returns the new generation number. Call `save` once the file systems thaw."""
        self._drain()
        with self.lock:
            assert self.state is not None
            out, self.pass_bits = self.pass_bits, DirtyBitmap(self.dev.size)
            self.cut_pages, self.pass_pages = self.pass_pages, {}
            self._fine = False
            return out, self.state.advance()

    def save(self) -> None:
        """Persist the state after a final cut: outside the freeze (it fsyncs), and only for
        clean restarts (a running agent's saved state is unclean anyway)."""
        with self.lock:
            assert self.state is not None
            self.state.save(self.state_path)

    def end_capture(self) -> None:
        """Stop keeping page masks (a capture that ended without its final cut)."""
        with self.lock:
            self._fine = False
            self.pass_pages, self.cut_pages = {}, {}

    def begin(self, session: str | None, gen: int) -> tuple[DirtyBitmap | None, str | None]:
        """Start a capture: a new pass set, and the blocks changed since generation `gen`
        of `session` (None and why not, when they are not known)."""
        self._drain()
        with self.lock:
            st = self.state
            assert st is not None
            self.pass_bits = DirtyBitmap(self.dev.size)
            self.pass_pages, self.cut_pages = {}, {}
            self._fine = True
            if session is None:
                return None, None
            if session != st.session:
                return None, self.start_reason or "change tracking restarted since that point"
            if gen < st.valid_from:
                return None, "the kernel lost write events since that point"
            got = st.changes_since(gen)
            if got is None:
                return None, f"no change history back to generation {gen}"
            return got, None

    @property
    def session(self) -> str:
        assert self.state is not None
        return self.state.session

    @property
    def generation(self) -> int:
        assert self.state is not None
        return self.state.gen

    def peek(self) -> DirtyBitmap:
        """Blocks written since the last cut (their pages in `cut_pages`), without starting
        a new pass set."""
        self._drain()
        with self.lock:
            self.cut_pages = dict(self.pass_pages)
            return self.pass_bits.copy()


def _mark_pages(pages: dict[int, int], first: int, last: int) -> None:
    """Set pages `first..last` (4 KiB, disk-wide numbers) in per-block masks."""
    p = first
    while p <= last:
        b = p // PAGES_PER_BLOCK
        hi = min(last, (b + 1) * PAGES_PER_BLOCK - 1)
        pages[b] = pages.get(b, 0) | (((1 << (hi - p + 1)) - 1) << (p - b * PAGES_PER_BLOCK))
        p = hi + 1

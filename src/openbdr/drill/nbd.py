"""A small NBD server (fixed newstyle handshake) over asyncio, for drills and instant access.

Serves `Image`s by export name on a unix socket or 127.0.0.1. It speaks what QEMU,
qemu-img and libnbd need: OPT_EXPORT_NAME, OPT_INFO/OPT_GO (with block-size info),
OPT_LIST, OPT_ABORT; READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC with simple
replies. Image I/O runs in worker threads so one slow chunk fetch does not stall the
loop. The server runs its loop in a daemon thread: `with NbdServer(...) as srv:`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import OpenBDRError
from .image import Image

log = logging.getLogger(__name__)

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_CAN_MULTI_CONN = 1 << 8

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6

MAX_REQUEST = 32 << 20
REQUEST = struct.Struct(">IHHQQI")
OPT_HEADER = struct.Struct(">QII")


class NbdError(OpenBDRError):
    """The NBD server could not start."""


class _Abort(Exception):
    pass


def transmission_flags(image: Image) -> int:
    flags = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN
    if image.writable:
        flags |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES
    else:
        flags |= TF_READ_ONLY
    return flags


class NbdServer:
    """Serve `exports` (name → image) until `stop()`; '' names the first export."""

    def __init__(
        self,
        exports: Mapping[str, Image],
        *,
        unix_path: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = 4,
    ) -> None:
        if not exports:
            raise NbdError("nothing to export")
        self.exports = dict(exports)
        self.unix_path = unix_path
        self.host = host
        self.port = port
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="nbd-io")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.requests = 0

    # -- life cycle ----------------------------------------------------------
    def start(self) -> NbdServer:
        self._thread = threading.Thread(target=self._run, name="nbd-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise NbdError(f"NBD server cannot listen: {self._error}") from None
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _listen(self) -> None:
        if self.unix_path:
            self._server = await asyncio.start_unix_server(self._serve, path=self.unix_path)
        else:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)

    def __enter__(self) -> NbdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def uri(self, name: str) -> str:
        if self.unix_path:
            return f"nbd+unix:///{name}?socket={self.unix_path}"
        return f"nbd://{self.host}:{self.port}/{name}"

    # -- protocol ------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            image = await self._handshake(reader, writer)
            if image is not None:
                await self._transmit(image, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, _Abort):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("NBD connection failed")
        finally:
            self._conns.discard(task)
            writer.close()

    def _lookup(self, name: str) -> Image | None:
        if name == "" and self.exports:
            return next(iter(self.exports.values()))
        return self.exports.get(name)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Image | None:
        writer.write(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        await writer.drain()
        (cflags,) = struct.unpack(">I", await reader.readexactly(4))
        no_zeroes = bool(cflags & FLAG_NO_ZEROES)

        async def reply(opt: int, rtype: int, data: bytes = b"") -> None:
            writer.write(OPT_HEADER.pack(REPLY_MAGIC, opt, rtype) + struct.pack(">I", len(data)))
            writer.write(data)
            await writer.drain()

        while True:
            magic, opt, length = OPT_HEADER.unpack(await reader.readexactly(OPT_HEADER.size))
            if magic != IHAVEOPT:
                raise _Abort()
            if length > 65536:
                raise _Abort()
            data = await reader.readexactly(length)
            if opt == OPT_EXPORT_NAME:
                image = self._lookup(data.decode(errors="replace"))
                if image is None:
                    raise _Abort()
                writer.write(struct.pack(">QH", image.size, transmission_flags(image)))
                if not no_zeroes:
                    writer.write(bytes(124))
                await writer.drain()
                return image
            if opt == OPT_ABORT:
                await reply(opt, REP_ACK)
                raise _Abort()
            if opt == OPT_LIST:
                for name in self.exports:
                    raw = name.encode()
                    await reply(opt, REP_SERVER, struct.pack(">I", len(raw)) + raw)
                await reply(opt, REP_ACK)
                continue
            if opt in (OPT_INFO, OPT_GO):
                if len(data) < 6:
                    await reply(opt, REP_ERR_INVALID)
                    continue
                (nlen,) = struct.unpack_from(">I", data)
                if 4 + nlen + 2 > len(data):
                    await reply(opt, REP_ERR_INVALID)
                    continue
                name = data[4 : 4 + nlen].decode(errors="replace")
                image = self._lookup(name)
                if image is None:
                    await reply(opt, REP_ERR_UNKNOWN, f"no export {name!r}".encode())
                    continue
                await reply(
                    opt,
                    REP_INFO,
                    struct.pack(">HQH", INFO_EXPORT, image.size, transmission_flags(image)),
                )
                await reply(
                    opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST)
                )
                await reply(opt, REP_ACK)
                if opt == OPT_GO:
                    return image
                continue
            await reply(opt, REP_ERR_UNSUP)

    async def _transmit(
        self, image: Image, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()

        def simple(err: int, handle: int) -> bytes:
            return struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, err, handle)

        while True:
            magic, _flags, cmd, handle, offset, length = REQUEST.unpack(
                await reader.readexactly(REQUEST.size)
            )
            if magic != REQUEST_MAGIC:
                raise _Abort()
            self.requests += 1
            payload = b""
            if cmd == CMD_WRITE:
                if length > MAX_REQUEST:
                    raise _Abort()  # cannot resync the stream after an oversized payload
                payload = await reader.readexactly(length)
            if cmd == CMD_DISC:
                return
            err = 0
            data = b""
            in_range = offset + length <= image.size
            try:
                if cmd == CMD_READ:
                    if not in_range or length > MAX_REQUEST:
                        err = errno.EINVAL
                    else:
                        data = await loop.run_in_executor(self._pool, image.pread, offset, length)
                elif cmd == CMD_WRITE:
                    if not image.writable:
                        err = errno.EPERM
                    elif not in_range:
                        err = errno.ENOSPC
                    else:
                        await loop.run_in_executor(self._pool, image.pwrite, offset, payload)
                elif cmd == CMD_WRITE_ZEROES:
                    if not image.writable:
                        err = errno.EPERM
                    elif not in_range:
                        err = errno.ENOSPC
                    else:
                        await loop.run_in_executor(self._pool, image.write_zeroes, offset, length)
                elif cmd == CMD_TRIM:
                    err = 0 if image.writable else errno.EPERM  # advisory: keep the data
                elif cmd == CMD_FLUSH:
                    await loop.run_in_executor(self._pool, image.flush)
                else:
                    err = errno.EINVAL
            except OpenBDRError as exc:
                log.error("NBD %s at %d+%d failed: %s", cmd, offset, length, exc)
                err = errno.EIO
            writer.write(simple(err, handle))
            if cmd == CMD_READ and not err:
                writer.write(data)
            await writer.drain()

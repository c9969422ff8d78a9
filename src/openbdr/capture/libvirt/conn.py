"""A libvirt connection with the platform's errors: one clear line each."""

from __future__ import annotations

from typing import Any

import libvirt

from ..platform import PlatformError, UnknownVM

#: libvirt >= 7.2 has checkpoints and pull-mode backups enabled for QEMU
MIN_LIBVIRT = 7_002_000

_AUTH = {
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_AUTH_CANCELLED,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}

# libvirt prints every error on stderr unless a handler takes them; ours are raised
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def message(exc: libvirt.libvirtError) -> str:
    return (exc.get_error_message() or str(exc)).strip()


def connect(uri: str, credentials: dict[str, Any]) -> libvirt.virConnect:
    """Open `uri`; with a username/password, answer libvirt's SASL questions with them."""
    user = credentials.get("username")
    password = credentials.get("password")
    try:
        if user or password:

            def answer(creds: list[list[Any]], _data: object) -> int:
                for cred in creds:
                    if cred[0] == libvirt.VIR_CRED_AUTHNAME:
                        cred[4] = str(user or "")
                    elif cred[0] == libvirt.VIR_CRED_PASSPHRASE:
                        cred[4] = str(password or "")
                    else:
                        return -1
                return 0

            auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], answer, None]
            return libvirt.openAuth(uri, auth, 0)
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in _AUTH:
            raise PlatformError(
                f"libvirt at {uri} refused the credentials: {message(exc)}",
                "check the platform's username and password",
            ) from None
        raise PlatformError(
            f"cannot reach libvirt at {uri}: {message(exc)}",
            "check the URI and that libvirtd (or virtqemud) runs there",
        ) from None


def domain(conn: libvirt.virConnect, uri: str, ref: str) -> libvirt.virDomain:
    """A domain by UUID or name."""
    try:
        if len(ref) == 36 and ref.count("-") == 4:
            try:
                return conn.lookupByUUIDString(ref)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return conn.lookupByName(ref)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise UnknownVM(
                f"no VM {ref!r} on libvirt platform {uri}",
                "run `openbdr platform discover` to list them",
            ) from None
        raise failed(exc, f"look up VM {ref!r}", uri) from None


def failed(exc: libvirt.libvirtError, what: str, uri: str) -> PlatformError:
    """A libvirt error while doing `what`, as the platform's one-line error."""
    if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED:
        return PlatformError(
            f"libvirt at {uri} denied the request to {what}: {message(exc)}",
            "connect read-write (not the read-only socket) as a user allowed to manage domains",
        )
    return PlatformError(f"libvirt at {uri} could not {what}: {message(exc)}")


POWER = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}

"""Errors a user can act on, and the exit codes every command keeps to (docs/errors.md).

Every `OpenBDRError` renders as one line: what failed, which object, what to do. The CLI
prints it and exits with the error's code; anything else is a bug: one line saying so,
and the traceback only with `--debug`.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    #: the operation could not be done (a source unreadable, a target refused, a bug)
    FAILED = 1
    #: a usage or input error: a bad option or value, an unknown host, point or path
    USAGE = 2
    #: stored data is missing or damaged (never returned as if it were good)
    DAMAGED = 3
    #: another process holds the lease (a sync of the same host, maintenance)
    BUSY = 4
    #: stopped on request (pause, cancel); running it again continues
    STOPPED = 5
    #: a service did not answer (S3, the control-plane server, a platform)
    UNREACHABLE = 6
    #: credentials or a passphrase were refused
    AUTH = 7


class OpenBDRError(Exception):
    """An error the user can act on; `str()` is the one line the CLI prints."""

    exit_code: int = ExitCode.FAILED

    def __init__(self, what: str, hint: str | None = None) -> None:
        self.what = what
        self.hint = hint
        super().__init__(f"{what} ({hint})" if hint else what)


class InputError(OpenBDRError):
    """A bad option or value, or a name that does not exist."""

    exit_code = ExitCode.USAGE


class SourceError(OpenBDRError):
    """A source cannot be opened or read."""


class RepositoryError(InputError):
    """The repository is missing or not one (a wrong path or URL, an unknown format)."""


class CorruptionError(OpenBDRError):
    """Stored data failed its checksum or hash; never returned as if it were good."""

    exit_code = ExitCode.DAMAGED


class LockedError(OpenBDRError):
    """Another process holds the lease (a sync of the same host, or maintenance)."""

    exit_code = ExitCode.BUSY


class UnreachableError(OpenBDRError):
    """A service (S3, the server, a platform) did not answer."""

    exit_code = ExitCode.UNREACHABLE


class AuthError(OpenBDRError):
    """Credentials or a passphrase were refused, or none were given."""

    exit_code = ExitCode.AUTH


class TargetError(OpenBDRError):
    """A restore target is unsuitable (too small, not empty, not writable)."""

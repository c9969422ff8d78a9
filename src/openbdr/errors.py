"""Errors a user can act on.

Every `OpenBDRError` renders as one line: what failed, which object, what to do.
The CLI prints it and exits non-zero; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class OpenBDRError(Exception):
    """An error the user can act on; `str()` is the one line the CLI prints."""

    exit_code = 1

    def __init__(self, what: str, hint: str | None = None) -> None:
        self.what = what
        self.hint = hint
        super().__init__(f"{what} ({hint})" if hint else what)


class SourceError(OpenBDRError):
    """A source cannot be opened or read."""


class RepositoryError(OpenBDRError):
    """The repository is missing, of an unknown format, or unreachable."""


class CorruptionError(OpenBDRError):
    """Stored data failed its checksum or hash; never returned as if it were good."""

    exit_code = 3


class LockedError(OpenBDRError):
    """Another process holds the lease (a sync of the same host, or maintenance)."""

    exit_code = 4


class TargetError(OpenBDRError):
    """A restore target is unsuitable (too small, not empty, not writable)."""

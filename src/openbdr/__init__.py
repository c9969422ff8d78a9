"""OpenBDR: block-level disaster recovery with restore points proved by drills."""

__version__ = "0.1.0"

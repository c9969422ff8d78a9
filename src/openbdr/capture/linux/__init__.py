"""Source `agent`: live Linux disks, captured from user space on a stock kernel.

A private tracefs instance reports every completed write of the protected disks
(`tracker`), dirty 1 MiB blocks persist across agent restarts (`bitmap`), and a sync copies
in passes while applications keep writing, then re-reads what changed meanwhile under a
short `FIFREEZE` whose thaw a separate watchdog process guarantees (`freeze`, `source`).
Disks the agent creates itself can instead be copy-on-write volumes (`cow`), and an
installed dattobd / elastio-snap driver is used when present (`dattobd`).
"""

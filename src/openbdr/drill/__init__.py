"""DR drills: serve restore points in place, boot or start them in isolation, probe, report.

A restore point is trusted only once a drill has booted it, let the OS or database run
its own recovery and checked its services. Everything here works from the repository
alone (no full restore first) and always tears down what it started.
"""

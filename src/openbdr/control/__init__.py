"""The control plane: catalog, API, scheduler, jobs with leases, agents (DESIGN.md §5)."""

"""Faithful fakes of platforms that cannot run here (DESIGN.md §6): test infrastructure."""

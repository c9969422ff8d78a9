"""Targets: blob stores, the object-mode repository and (later) block-mode volume stores."""

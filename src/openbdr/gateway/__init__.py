"""The DR-site gateway of block mode: receives blocks, verifies them, writes volumes in place."""

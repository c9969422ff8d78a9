"""Sources: how a host's disks are captured. One module per source, one contract (`base`)."""

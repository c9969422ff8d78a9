"""A faithful fake of Keystone v3, Nova and Cinder v3 whose volumes are real RBD images."""

from .cloud import ApiError, Cloud, Faults
from .server import FakeServer, write_clouds_yaml

__all__ = ["ApiError", "Cloud", "FakeServer", "Faults", "write_clouds_yaml"]

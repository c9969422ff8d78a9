"""A faithful fake of the EC2 Query API subset and the EBS direct APIs (docs/aws.md)."""

from .server import ACCESS_KEY, SECRET_KEY, FakeAWS
from .state import BLOCK, GIB, Account, Instance, Snap, Volume

__all__ = [
    "ACCESS_KEY",
    "BLOCK",
    "GIB",
    "SECRET_KEY",
    "Account",
    "FakeAWS",
    "Instance",
    "Snap",
    "Volume",
]

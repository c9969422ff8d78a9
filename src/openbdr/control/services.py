"""What the API handlers share: the catalog, the queue, the key, the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .crypto import SecretBox
from .jobs import JobQueue


@dataclass
class Services:
    engine: Engine
    factory: sessionmaker[Session]
    box: SecretBox
    queue: JobQueue
    data_dir: Path
    server_id: str
    extra: dict[str, Any] = field(default_factory=dict)

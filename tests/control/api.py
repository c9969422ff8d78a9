"""An in-process API (no workers, no scheduler) on a given catalog, with a user per role."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from openbdr.control.app import ServerConfig, create_app


def make_api(data: Path, database: str) -> tuple[FastAPI, dict[str, str]]:
    # the schemathesis walk creates targets: keep any local repository inside the test's dir
    app = create_app(
        ServerConfig(data, database, workers=0, scheduler=False, repository_roots=(data.parent,))
    )
    admin = (data / "admin.token").read_text().strip()
    tokens = {"admin": admin}
    with TestClient(app) as c:
        h = {"Authorization": f"Bearer {admin}"}
        for role in ("viewer", "operator"):
            assert c.post("/api/v1/users", headers=h,
                          json={"name": role, "role": role, "password": "secret-" + role}
                          ).status_code == 201
            r = c.post("/api/v1/tokens", headers=h, json={"user": role, "name": "t"})
            tokens[role] = r.json()["token"]
        repo = data.parent / "repo"
        assert c.post("/api/v1/targets", headers=h, json={
            "name": "dr", "url": str(repo), "init": True,
            "secrets": {"AWS_SECRET_ACCESS_KEY": "very-secret-value"}}).status_code == 201
        assert c.post("/api/v1/policies", headers=h,
                      json={"name": "gold", "rpo_seconds": 300}).status_code == 201
        assert c.post("/api/v1/hosts", headers=h, json={
            "name": "web1", "target": "dr", "policy": "gold",
            "source": {"type": "image", "paths": ["/nonexistent.img"]}}).status_code == 201
        r = c.post("/api/v1/agents/enrolment-tokens", headers=h, json={"pool": "web1"})
        r = c.post("/api/v1/agents/enrol", json={"token": r.json()["token"], "name": "ag1"})
        tokens["agent"] = r.json()["credential"]
    return app, tokens

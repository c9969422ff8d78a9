"""A small HTTP client for the CLI and agents: errors become one clear line."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from ..errors import OpenBDRError


class ServerError(OpenBDRError):
    """The server refused a request or cannot be reached."""


class Client:
    def __init__(self, url: str, token: str | None, verify: bool | str | ssl.SSLContext = True,
                 timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(verify, str):  # a private CA's certificate file
            verify = ssl.create_default_context(cafile=verify)  # type: ignore[assignment]
        self.http = httpx.Client(base_url=self.url, headers=headers, verify=verify,
                                 timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, "/api/v1" + path, **kw)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the OpenBDR server at {self.url}: {exc}",
                              "check --server / OPENBDR_SERVER and that it runs") from None
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ServerError(f"server: {err['message']}", err.get("hint"))
            except (ValueError, KeyError, TypeError):
                raise ServerError(f"server answered {r.status_code}: {r.text[:200]}") from None
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                  if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

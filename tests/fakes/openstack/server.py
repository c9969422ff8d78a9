"""The wire side of the fake: Keystone v3, Nova v2.1 and Cinder v3 over HTTP on 127.0.0.1.

Paths follow a devstack layout (`/identity`, `/compute/v2.1`, `/volume/v3/{project}`), so
that the service catalog, version discovery and microversion negotiation of keystoneauth
and openstacksdk run exactly as against a real cloud.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .cloud import (
    ApiError,
    Cloud,
    Group,
    GroupSnapshot,
    Server,
    Snapshot,
    User,
    Volume,
)

NOVA_MIN, NOVA_MAX = (2, 1), (2, 95)
CINDER_MIN, CINDER_MAX = (3, 0), (3, 70)
#: osapi_max_limit: the most items one page gives
MAX_LIMIT = 1000
TOKEN_TTL = 3600


def _ver(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


class Handler(BaseHTTPRequestHandler):
    server: FakeServer
    protocol_version = "HTTP/1.1"
    #: TCP_NODELAY, as Apache, uwsgi and eventlet's wsgi serve the real APIs: with Nagle
    #: on, the body written after the headers waited for the client's delayed ACK, 40 ms
    #: a request, which no real cloud adds
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ------------------------------------------------------------------------
    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Openstack-Request-Id", "req-" + str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return {}
        try:
            data = json.loads(self.rfile.read(n))
        except ValueError:
            raise ApiError(400, "badRequest", "Malformed request body") from None
        if not isinstance(data, dict):
            raise ApiError(400, "badRequest", "Malformed request body")
        return data

    def _dispatch(self, method: str) -> None:
        cloud = self.server.cloud
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        cloud.requests.append((method, path))
        extra: dict[str, str] = {}
        try:
            body = self._body() if method in ("POST", "PUT") else {}  # read it whatever
            # the answer: an unread body would corrupt the next request of the connection
            if cloud.faults.take_500(method, path):
                raise ApiError(500, "computeFault", "The server has either erred or is "
                               "incapable of performing the requested operation.")
            status, out, extra = self.server.route(self, method, path, query, body)
            self._send(status, out, extra)
        except ApiError as err:
            key = err.kind
            if key == "keystone":
                payload = {"error": {"code": err.status, "message": err.message,
                                     "title": {401: "Unauthorized", 404: "Not Found"}.get(
                                         err.status, "Error")}}
            else:
                payload = {key: {"code": err.status, "message": err.message}}
            self._send(err.status, payload, extra)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")


Route = Callable[..., tuple[int, Any, dict[str, str]]]


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cloud: Cloud, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), Handler)
        self.cloud = cloud
        self.base = f"http://{host}:{self.server_address[1]}"
        self.thread: threading.Thread | None = None
        self.region = "RegionOne"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> FakeServer:
        self.thread = threading.Thread(target=self.serve_forever, daemon=True,
                                       name="fake-openstack")
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    @property
    def auth_url(self) -> str:
        return f"{self.base}/identity/v3"

    # -- routing -------------------------------------------------------------------------
    def route(self, h: Handler, method: str, path: str, query: dict[str, str],
              body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if path in ("/identity", "/identity/v3") and method == "GET":
            return self.identity_versions(path)
        if path == "/identity/v3/auth/tokens":
            if method == "POST":
                return self.issue_token(body)
            self.authenticate(h)
            if method == "GET":
                return self.validate_token(h)
            raise ApiError(405, "keystone", "Method not allowed")
        if path == "/compute" and method == "GET":
            return 200, {"versions": [self.nova_version()]}, {}
        if path == "/compute/v2.1" and method == "GET":
            return 200, {"version": self.nova_version()}, {}
        if path.startswith("/compute/v2.1/"):
            user, project = self.authenticate(h)
            mv, headers = self.microversion(h, "compute", NOVA_MIN, NOVA_MAX)
            headers["X-OpenStack-Nova-API-Version"] = _ver(mv)
            status, out = self.nova(method, path[len("/compute/v2.1"):], query, body,
                                    user, project, mv)
            return status, out, headers
        if path == "/volume" and method == "GET":
            return 300, {"versions": [self.cinder_version()]}, {}
        if path == "/volume/v3" and method == "GET":
            return 200, {"versions": [self.cinder_version()]}, {}
        m = re.fullmatch(r"/volume/v3/([0-9a-f]+)(/.*)?", path)
        if m:
            user, project = self.authenticate(h)
            if m.group(1) != project:
                raise ApiError(403, "forbidden", "Policy doesn't allow this operation "
                               "for another project.")
            mv, headers = self.microversion(h, "volume", CINDER_MIN, CINDER_MAX)
            status, out = self.cinder(method, m.group(2) or "/", query, body, project, mv, user)
            return status, out, headers
        raise ApiError(404, "itemNotFound", f"The resource could not be found: {path}")

    # -- Keystone ------------------------------------------------------------------------
    def identity_versions(self, path: str) -> tuple[int, Any, dict[str, str]]:
        v3 = {
            "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.base}/identity/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}],
        }
        if path == "/identity":
            return 300, {"versions": {"values": [v3]}}, {}
        return 200, {"version": v3}, {}

    def catalog(self, project_id: str) -> list[dict[str, Any]]:
        def svc(stype: str, name: str, url: str) -> dict[str, Any]:
            eps = [
                {"id": uuid.uuid4().hex, "interface": iface, "region": self.region,
                 "region_id": self.region, "url": url}
                for iface in ("public", "internal", "admin")
            ]
            return {"id": uuid.uuid4().hex, "type": stype, "name": name, "endpoints": eps}

        vol = f"{self.base}/volume/v3/{project_id}"
        return [
            svc("identity", "keystone", f"{self.base}/identity"),
            svc("compute", "nova", f"{self.base}/compute/v2.1"),
            svc("block-storage", "cinder", vol),
            svc("volumev3", "cinderv3", vol),
        ]

    def issue_token(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        cloud = self.cloud
        ident = (body.get("auth") or {}).get("identity") or {}
        methods = ident.get("methods") or []
        user: User | None = None
        project_id: str | None = None
        if "password" in methods:
            pw = (ident.get("password") or {}).get("user") or {}
            for u in cloud.users.values():
                if (pw.get("id") == u.id or pw.get("name") == u.name) and \
                        pw.get("password") == u.password:
                    user = u
            scope = ((body.get("auth") or {}).get("scope") or {}).get("project") or {}
            if user is not None:
                want = scope.get("id") or next(
                    (pid for pid, n in cloud.projects.items() if n == scope.get("name")), None)
                if scope and want != user.project_id:
                    raise ApiError(401, "keystone", "User has no access to project")
                project_id = user.project_id
        elif "application_credential" in methods:
            ac = ident.get("application_credential") or {}
            cred = cloud.app_creds.get(ac.get("id", ""))
            if cred is not None and cred.secret == ac.get("secret"):
                user = cloud.users[cred.user_id]
                project_id = cred.project_id
        if user is None or project_id is None:
            raise ApiError(401, "keystone", "The request you have made requires "
                           "authentication.")
        token = "gAAAAA" + uuid.uuid4().hex + uuid.uuid4().hex
        exp = time.time() + TOKEN_TTL
        cloud.tokens[token] = (user, project_id, exp)
        return 201, {"token": self.token_body(user, project_id, exp, methods)}, {
            "X-Subject-Token": token}

    def token_body(self, user: User, project_id: str, exp: float,
                   methods: list[str]) -> dict[str, Any]:
        return {
            "methods": methods, "audit_ids": [uuid.uuid4().hex[:22]],
            "expires_at": _iso(exp), "issued_at": _iso(exp - TOKEN_TTL),
            "user": {"id": user.id, "name": user.name, "domain": self.cloud.domain,
                     "password_expires_at": None},
            "project": {"id": project_id, "name": self.cloud.projects[project_id],
                        "domain": self.cloud.domain},
            "is_domain": False,
            "roles": [{"id": uuid.uuid4().hex, "name": r} for r in user.roles],
            "catalog": self.catalog(project_id),
        }

    def authenticate(self, h: Handler) -> tuple[User, str]:
        tok = h.headers.get("X-Auth-Token") or ""
        entry = self.cloud.tokens.get(tok)
        if entry is None or entry[2] < time.time():
            raise ApiError(401, "keystone", "The request you have made requires "
                           "authentication.")
        return entry[0], entry[1]

    def validate_token(self, h: Handler) -> tuple[int, Any, dict[str, str]]:
        sub = h.headers.get("X-Subject-Token") or ""
        entry = self.cloud.tokens.get(sub)
        if entry is None:
            raise ApiError(404, "keystone", "Could not find token.")
        user, project, exp = entry
        return 200, {"token": self.token_body(user, project, exp, ["password"])}, {
            "X-Subject-Token": sub}

    # -- microversions ---------------------------------------------------------------------
    def microversion(self, h: Handler, service: str, lo: tuple[int, int],
                     hi: tuple[int, int]) -> tuple[tuple[int, int], dict[str, str]]:
        want = lo
        raw = h.headers.get("OpenStack-API-Version") or ""
        legacy = {"compute": "X-OpenStack-Nova-API-Version",
                  "volume": "X-OpenStack-Volume-API-Version"}[service]
        text = ""
        for part in raw.split(","):
            name, _, ver = part.strip().partition(" ")
            if name.lower() == service:
                text = ver.strip()
        text = text or (h.headers.get(legacy) or "").strip()
        if text == "latest":
            want = hi
        elif text:
            m = re.fullmatch(r"(\d+)\.(\d+)", text)
            if not m:
                raise ApiError(400, "badRequest", f"Invalid API version {text!r}")
            want = (int(m.group(1)), int(m.group(2)))
            if not lo <= want <= hi:
                raise ApiError(406, "computeFault" if service == "compute" else "badRequest",
                               f"Version {text} is not supported by the API. Minimum is "
                               f"{_ver(lo)} and maximum is {_ver(hi)}.")
        return want, {"OpenStack-API-Version": f"{service} {_ver(want)}",
                      "Vary": "OpenStack-API-Version"}

    def nova_version(self) -> dict[str, Any]:
        return {
            "id": "v2.1", "status": "CURRENT", "version": _ver(NOVA_MAX),
            "min_version": _ver(NOVA_MIN), "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{self.base}/compute/v2.1/"}],
        }

    def cinder_version(self) -> dict[str, Any]:
        return {
            "id": "v3.0", "status": "CURRENT", "version": _ver(CINDER_MAX),
            "min_version": _ver(CINDER_MIN), "updated": "2023-08-31T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.base}/volume/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.volume+json;version=3"}],
        }

    # -- paging --------------------------------------------------------------------------
    def page(self, items: list[Any], query: dict[str, str], url: str, key: str,
             fault: str = "badRequest") -> dict[str, Any]:
        """limit/marker paging: items after `marker`, at most `limit` (and MAX_LIMIT); a
        `<key>_links` next link when more may follow."""
        cap = min(MAX_LIMIT, getattr(self, "page_size", MAX_LIMIT))
        try:
            limit = min(int(query.get("limit", cap)), cap)
        except ValueError:
            raise ApiError(400, fault, "limit param must be an integer") from None
        if limit < 0:
            raise ApiError(400, fault, "limit param must be positive")
        marker = query.get("marker")
        start = 0
        if marker is not None:
            ids = [i["id"] for i in items]
            if marker not in ids:
                raise ApiError(400, fault, f"marker [{marker}] not found")
            start = ids.index(marker) + 1
        chunk = items[start:start + limit]
        out: dict[str, Any] = {key: chunk}
        if chunk and len(chunk) == limit:  # a full page: more may follow (Nova, Cinder)
            rest = {k: v for k, v in query.items() if k not in ("marker",)}
            rest["limit"] = str(limit)
            rest["marker"] = chunk[-1]["id"]
            out[f"{key}_links"] = [{"rel": "next", "href": f"{url}?{urlencode(rest)}"}]
        return out

    # -- Nova ----------------------------------------------------------------------------
    def server_json(self, s: Server, detail: bool, mv: tuple[int, int]) -> dict[str, Any]:
        link = f"{self.base}/compute/v2.1/servers/{s.id}"
        out: dict[str, Any] = {"id": s.id, "name": s.name, "links": [
            {"rel": "self", "href": link}, {"rel": "bookmark", "href": link}]}
        if not detail:
            return out
        vols = [{"id": v, "delete_on_termination": False} for v, _, _ in s.volumes]
        out.update({
            "status": s.status, "tenant_id": s.project_id, "user_id": s.user_id,
            "metadata": dict(s.metadata), "hostId": uuid.uuid5(uuid.NAMESPACE_DNS,
                                                               s.project_id).hex,
            "image": {"id": s.image, "links": [{"rel": "bookmark", "href":
                      f"{self.base}/compute/images/{s.image}"}]} if s.image else "",
            "flavor": {"vcpus": 1, "ram": 512, "disk": 0,
                                                "ephemeral": 0, "swap": 0,
                                                "original_name": "m1.tiny", "extra_specs": {}},
            "created": s.created, "updated": s.created, "addresses": {},
            "accessIPv4": "", "accessIPv6": "", "progress": 0,
            "OS-DCF:diskConfig": "AUTO", "OS-EXT-AZ:availability_zone": "nova",
            "config_drive": "", "key_name": None,
            "OS-SRV-USG:launched_at": s.created, "OS-SRV-USG:terminated_at": None,
            "OS-EXT-STS:task_state": None, "OS-EXT-STS:vm_state": "active"
            if s.status == "ACTIVE" else "stopped",
            "OS-EXT-STS:power_state": s.power_state,
            "os-extended-volumes:volumes_attached": vols,
            "security_groups": [{"name": "default"}], "locked": False,
            "description": None, "tags": [], "trusted_image_certificates": None,
            "server_groups": [], "locked_reason": None,
        })
        if mv < (2, 47):
            out["flavor"] = {"id": "1", "links": []}
        return out

    def nova(self, method: str, path: str, query: dict[str, str], body: dict[str, Any],
             user: User, project: str, mv: tuple[int, int]) -> tuple[int, Any]:
        cloud = self.cloud
        with cloud.lock:
            mine = [s for s in cloud.servers.values() if s.project_id == project]
            if method == "GET" and path in ("/servers", "/servers/detail"):
                detail = path.endswith("detail")
                if "name" in query:
                    mine = [s for s in mine if re.search(query["name"], s.name)]
                items = [self.server_json(s, detail, mv) for s in mine]
                return 200, self.page(items, query, f"{self.base}/compute/v2.1{path}",
                                      "servers")
            m = re.fullmatch(r"/servers/([^/]+)(/os-volume_attachments)?(?:/([^/]+))?", path)
            if m:
                server = cloud.server(m.group(1), project)
                if m.group(2) is None and method == "GET":
                    return 200, {"server": self.server_json(server, True, mv)}
                if m.group(2) and method == "GET" and m.group(3) is None:
                    atts = [self.attachment_json(server, v, d, a, mv)
                            for v, d, a in server.volumes]
                    return 200, self.page(atts, query, f"{self.base}/compute/v2.1{path}",
                                          "volumeAttachments")
                if m.group(2) and method == "GET":
                    for v, d, a in server.volumes:
                        if v == m.group(3):
                            return 200, {"volumeAttachment": self.attachment_json(
                                server, v, d, a, mv)}
                    raise ApiError(404, "itemNotFound", f"Volume {m.group(3)} is not "
                                   f"attached to server {server.id}")
                if m.group(2) and method == "POST" and m.group(3) is None:
                    req = body.get("volumeAttachment") or {}
                    vid = req.get("volumeId")
                    if not isinstance(vid, str):
                        raise ApiError(400, "badRequest", "Invalid input for field/attribute "
                                       "volumeAttachment. 'volumeId' is a required property")
                    cloud.attach(server, vid, req.get("device"))
                    v, d, a = server.volumes[-1]
                    return 200, {"volumeAttachment": self.attachment_json(server, v, d, a, mv)}
        raise ApiError(404, "itemNotFound", "The resource could not be found.")

    def attachment_json(self, s: Server, vid: str, device: str, att: str,
                        mv: tuple[int, int]) -> dict[str, Any]:
        out: dict[str, Any] = {"device": device, "serverId": s.id, "volumeId": vid}
        if mv < (2, 89):
            out["id"] = vid
        else:
            out["attachment_id"] = att
            out["bdm_uuid"] = str(uuid.uuid5(uuid.NAMESPACE_OID, att))
        if mv >= (2, 70):
            out["tag"] = None
        if mv >= (2, 79):
            out["delete_on_termination"] = False
        return out

    # -- Cinder --------------------------------------------------------------------------
    def volume_json(self, v: Volume, mv: tuple[int, int], project: str) -> dict[str, Any]:
        link = f"{self.base}/volume/v3/{project}/volumes/{v.id}"
        out: dict[str, Any] = {
            "id": v.id, "name": v.name, "size": v.size, "status": v.status,
            "attachments": [dict(a) for a in v.attachments],
            "availability_zone": "nova", "bootable": "true" if v.bootable else "false",
            "created_at": v.created_at, "updated_at": v.updated_at, "description": None,
            "encrypted": False, "multiattach": False, "metadata": dict(v.metadata),
            "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link}],
            "migration_status": None, "replication_status": None, "snapshot_id": None,
            "source_volid": None, "consistencygroup_id": None, "user_id": "",
            "volume_type": "rbd", "os-vol-tenant-attr:tenant_id": v.project_id,
            "os-vol-host-attr:host": f"controller@ceph#{self.cloud.pool}",
        }
        if mv >= (3, 13):
            out["group_id"] = v.group_id
        if mv >= (3, 48):
            out["shared_targets"] = False
            out["service_uuid"] = "0c71b1d6-11fb-4d4f-9a3a-000000000001"
        if mv >= (3, 61):
            out["cluster_name"] = None
        if mv >= (3, 63):
            out["volume_type_id"] = "4a5b7e7c-0000-4000-8000-000000000rbd"[:36]
        if mv >= (3, 65):
            out["consumes_quota"] = True
        return out

    def snapshot_json(self, s: Snapshot, mv: tuple[int, int]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": s.id, "volume_id": s.volume_id, "name": s.name,
            "description": s.description, "size": s.size, "status": s.status,
            "metadata": dict(s.metadata), "created_at": s.created_at,
            "updated_at": s.updated_at,
            "os-extended-snapshot-attributes:progress": "100%" if s.status == "available"
            else "0%",
            "os-extended-snapshot-attributes:project_id": s.project_id,
        }
        if mv >= (3, 14):
            out["group_snapshot_id"] = s.group_snapshot_id
        if mv >= (3, 41):
            out["user_id"] = ""
        if mv >= (3, 65):
            out["consumes_quota"] = True
        return out

    def group_json(self, g: Group) -> dict[str, Any]:
        return {"id": g.id, "name": g.name, "group_type": g.group_type, "status": g.status,
                "volume_types": list(g.volume_types), "availability_zone": "nova",
                "created_at": g.created_at, "description": None}

    def group_snapshot_json(self, g: GroupSnapshot) -> dict[str, Any]:
        return {"id": g.id, "group_id": g.group_id, "group_type_id": g.group_type_id,
                "name": g.name, "description": g.description, "status": g.status,
                "created_at": g.created_at, "project_id": g.project_id}

    def cinder(self, method: str, path: str, query: dict[str, str], body: dict[str, Any],
               project: str, mv: tuple[int, int], user: User) -> tuple[int, Any]:
        cloud = self.cloud
        base = f"{self.base}/volume/v3/{project}"

        def need(v: tuple[int, int]) -> None:
            if mv < v:
                raise ApiError(404, "itemNotFound", "The resource could not be found.")

        with cloud.lock:
            if path in ("/volumes", "/volumes/detail") and method == "GET":
                vols = [v for v in cloud.volumes.values() if v.project_id == project]
                vols.sort(key=lambda v: (v.created_at, v.id), reverse=True)
                items = [self.volume_json(v, mv, project) if path.endswith("detail")
                         else {"id": v.id, "name": v.name, "links": []} for v in vols]
                return 200, self.page(items, query, f"{base}{path}", "volumes")
            if path == "/volumes" and method == "POST":
                vol = cloud.create_volume(body.get("volume") or {}, project)
                return 202, {"volume": self.volume_json(vol, mv, project)}
            m = re.fullmatch(r"/volumes/([^/]+)(/action)?", path)
            if m:
                vol = cloud.volume(m.group(1), project)
                if method == "GET" and not m.group(2):
                    return 200, {"volume": self.volume_json(vol, mv, project)}
                if method == "POST" and m.group(2):
                    if "os-extend" in body:
                        cloud.extend_volume(vol, (body["os-extend"] or {}).get("new_size"), mv)
                        return 202, None
                    raise ApiError(400, "badRequest", "There is no such action: "
                                   f"{next(iter(body), '')}")
            if path in ("/snapshots", "/snapshots/detail") and method == "GET":
                snaps = [s for s in cloud.snapshots.values() if s.project_id == project]
                for key in ("volume_id", "status", "name"):
                    if key in query:
                        snaps = [s for s in snaps if getattr(s, key) == query[key]]
                snaps.sort(key=lambda s: (s.created_at, s.id), reverse=True)
                items = [self.snapshot_json(s, mv) if path.endswith("detail")
                         else {"id": s.id, "name": s.name, "status": s.status,
                               "volume_id": s.volume_id} for s in snaps]
                return 200, self.page(items, query, f"{base}{path}", "snapshots")
            if path == "/snapshots" and method == "POST":
                snap = cloud.create_snapshot(body.get("snapshot") or {}, project, mv)
                return 202, {"snapshot": self.snapshot_json(snap, mv)}
            m = re.fullmatch(r"/snapshots/([^/]+)(/action)?", path)
            if m:
                snap = cloud.snapshot(m.group(1), project)
                if method == "GET" and not m.group(2):
                    return 200, {"snapshot": self.snapshot_json(snap, mv)}
                if method == "DELETE" and not m.group(2):
                    cloud.delete_snapshot(snap)
                    return 202, None
                if method == "POST" and m.group(2) and "os-force_delete" in body:
                    if "admin" not in user.roles:
                        raise ApiError(403, "forbidden", "Policy doesn't allow "
                                       "volume_extension:snapshot_admin_actions:force_delete "
                                       "to be performed.")
                    cloud.delete_snapshot(snap, force=True)
                    return 202, None
            if path in ("/group_types", "/group_types/detail") and method == "GET":
                need((3, 11))
                return 200, {"group_types": list(cloud.group_types.values())}
            m = re.fullmatch(r"/group_types/([^/]+)", path)
            if m and method == "GET":
                need((3, 11))
                gt = cloud.group_types.get(m.group(1))
                if gt is None:
                    raise ApiError(404, "itemNotFound", f"Group type with id "
                                   f"{m.group(1)} could not be found.")
                return 200, {"group_type": gt}
            if path in ("/groups", "/groups/detail") and method == "GET":
                need((3, 13))
                gs = [g for g in cloud.groups.values() if g.project_id == project]
                return 200, {"groups": [self.group_json(g) for g in gs]}
            m = re.fullmatch(r"/groups/([^/]+)", path)
            if m and method == "GET":
                need((3, 13))
                g = cloud.groups.get(m.group(1))
                if g is None or g.project_id != project:
                    raise ApiError(404, "itemNotFound", f"Group {m.group(1)} could not be "
                                   "found.")
                return 200, {"group": self.group_json(g)}
            if path in ("/group_snapshots", "/group_snapshots/detail") and method == "GET":
                need((3, 14))
                gss = [g for g in cloud.group_snapshots.values() if g.project_id == project]
                return 200, {"group_snapshots": [self.group_snapshot_json(g) for g in gss]}
            if path == "/group_snapshots" and method == "POST":
                need((3, 14))
                gsn = cloud.create_group_snapshot(body.get("group_snapshot") or {}, project)
                return 202, {"group_snapshot": self.group_snapshot_json(gsn)}
            m = re.fullmatch(r"/group_snapshots/([^/]+)", path)
            if m:
                need((3, 14))
                gsn = cloud.group_snapshot(m.group(1), project)
                if method == "GET":
                    return 200, {"group_snapshot": self.group_snapshot_json(gsn)}
                if method == "DELETE":
                    cloud.delete_group_snapshot(gsn)
                    return 202, None
        raise ApiError(404, "itemNotFound", "The resource could not be found.")


def write_clouds_yaml(path: str, name: str, server: FakeServer, username: str, password: str,
                      project: str) -> str:
    """A clouds.yaml naming this fake, as an operator would write it."""
    text = (
        "clouds:\n"
        f"  {name}:\n"
        "    auth:\n"
        f"      auth_url: {server.auth_url}\n"
        f"      username: {username}\n"
        f"      password: {password}\n"
        f"      project_name: {project}\n"
        "      user_domain_name: Default\n"
        "      project_domain_name: Default\n"
        f"    region_name: {server.region}\n"
        "    identity_api_version: 3\n"
    )
    with open(path, "w") as f:
        f.write(text)
    return path


def token_expires(server: FakeServer) -> None:
    """Expire every token at once (a Keystone restart with new fernet keys)."""
    for tok, (user, project, _exp) in list(server.cloud.tokens.items()):
        server.cloud.tokens[tok] = (user, project, time.time() - 1)



"""A stand-in for Harbor's REST API v2.0, projects and quotas only.

There is no Harbor on the machines mooring is tested on (no Harbor images can be had). This server answers the
endpoints that mooring.ops.harbor_project calls with the status codes and JSON shapes of Harbor's API
description (api/v2.0/swagger.yaml): HEAD /projects?project_name= (200/404), POST /projects (201 with Location,
409 when the name exists, 400 for a bad name or a non-string metadata value), GET/PUT/DELETE
/projects/{name_or_id} with X-Is-Resource-Name (200/404, 412 when the project still holds repositories),
GET /quotas?reference=project&reference_id=, PUT /quotas/{id}, GET /health (no auth, as in Harbor); robot
accounts: POST /robots (201 with the secret, shown only then; 409 for a taken name; 400 for a bad name or a
project-level robot whose permission is not its one existing project), GET /robots (paged), GET/PUT/DELETE
/robots/{id} (PUT cannot change name or level: 400), PATCH /robots/{id} (a new secret); names shown as
robot$<name> (system) and robot$<project>+<name> (project). HTTP basic auth (401), and 403 for a user without
the admin role. It is a stand-in, not Harbor: tests that use it say so.
"""

import base64
import itertools
import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PROJECT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


class BackgroundServer:
    """An HTTP (or, given an SSL context, HTTPS) server on a free local port, serving from a thread while it is
    used as a context manager."""

    def __init__(self, handler, ssl_context=None):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class HarborStandIn(BackgroundServer):
    def __init__(self, users):
        """users: {name: (password, is_admin)}"""
        self.users = users
        self.projects = {}
        self.quotas = {}
        self.robots = {}
        self.requests = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def _find(self, name_or_id, by_name):
        with self._lock:
            if by_name:
                return self.projects.get(name_or_id)
            return next((p for p in self.projects.values() if str(p["project_id"]) == name_or_id), None)

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body=None, headers=None):
                payload = b"" if body is None or self.command == "HEAD" else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, status, code, message):
                self._reply(status, {"errors": [{"code": code, "message": message}]})

            def _user(self):
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return None
                name, _sep, password = base64.b64decode(header[6:]).decode().partition(":")
                known = standin.users.get(name)
                return (name, known[1]) if known and known[0] == password else None

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def _dispatch(self):
                url = urlparse(self.path)
                standin.requests.append((self.command, url.path))
                if url.path == "/api/v2.0/health":
                    components = [{"name": name, "status": "healthy"} for name in ("core", "database", "registry")]
                    self._reply(200, {"status": "healthy", "components": components})
                    return
                user = self._user()
                if user is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="harbor"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.command in ("POST", "PUT", "PATCH", "DELETE") and not user[1]:
                    self._error(403, "FORBIDDEN", f"{user[0]} has no permission")
                    return
                by_name = self.headers.get("X-Is-Resource-Name", "false").lower() == "true"
                query = parse_qs(url.query)
                if url.path == "/api/v2.0/projects":
                    self._projects(query)
                elif match := re.fullmatch(r"/api/v2.0/projects/([^/]+)", url.path):
                    self._project(match.group(1), by_name)
                elif url.path == "/api/v2.0/robots":
                    self._robots(query)
                elif match := re.fullmatch(r"/api/v2.0/robots/(\d+)", url.path):
                    self._robot(int(match.group(1)))
                elif url.path == "/api/v2.0/quotas" and self.command == "GET":
                    wanted = query.get("reference_id", [""])[0]
                    self._reply(200, [q for q in standin.quotas.values() if str(q["ref"]["id"]) == wanted])
                elif (match := re.fullmatch(r"/api/v2.0/quotas/(\d+)", url.path)) and self.command == "PUT":
                    quota = standin.quotas.get(int(match.group(1)))
                    if quota is None:
                        self._error(404, "NOT_FOUND", "quota not found")
                        return
                    quota["hard"]["storage"] = int(self._body()["hard"]["storage"])
                    self._reply(200)
                else:
                    self._error(404, "NOT_FOUND", f"no route for {self.command} {url.path}")

            def _projects(self, query):
                if self.command == "HEAD":
                    name = query.get("project_name", [""])[0]
                    self._reply(200 if name in standin.projects else 404)
                elif self.command == "POST":
                    body = self._body()
                    name = body.get("project_name", "")
                    metadata = body.get("metadata") or {}
                    if not PROJECT_NAME.match(name):
                        self._error(400, "BAD_REQUEST", f"invalid project name {name!r}")
                    elif any(not isinstance(value, str) for value in metadata.values()):
                        self._error(400, "BAD_REQUEST", "metadata values must be strings")
                    elif name in standin.projects:
                        self._error(409, "CONFLICT", f"The project named {name} already exists")
                    else:
                        project_id = next(standin._ids)
                        standin.projects[name] = {
                            "project_id": project_id,
                            "name": name,
                            "metadata": {"public": metadata.get("public", "false")},
                            "repo_count": 0,
                        }
                        quota_id = next(standin._ids)
                        standin.quotas[quota_id] = {
                            "id": quota_id,
                            "ref": {"id": project_id, "name": name},
                            "hard": {"storage": int(body.get("storage_limit", -1))},
                            "used": {"storage": 0},
                        }
                        self._reply(201, headers={"Location": f"/api/v2.0/projects/{project_id}"})
                else:
                    self._reply(200, list(standin.projects.values()))

            def _project(self, name_or_id, by_name):
                project = standin._find(name_or_id, by_name)
                if project is None:
                    self._error(404, "NOT_FOUND", f"project {name_or_id} not found")
                elif self.command == "GET":
                    self._reply(200, project)
                elif self.command == "PUT":
                    metadata = self._body().get("metadata") or {}
                    if any(not isinstance(value, str) for value in metadata.values()):
                        self._error(400, "BAD_REQUEST", "metadata values must be strings")
                        return
                    project["metadata"].update(metadata)
                    self._reply(200)
                elif self.command == "DELETE":
                    if project["repo_count"]:
                        self._error(412, "PRECONDITION", "the project contains repositories, can not be deleted")
                        return
                    del standin.projects[project["name"]]
                    self._reply(200)

            @staticmethod
            def _shown(robot):
                return {key: value for key, value in robot.items() if key != "secret"}

            def _robots(self, query):
                if self.command == "GET":
                    page = int(query.get("page", ["1"])[0])
                    size = int(query.get("page_size", ["10"])[0])
                    robots = sorted(standin.robots.values(), key=lambda robot: robot["id"])
                    window = robots[(page - 1) * size : page * size]
                    self._reply(200, [self._shown(r) for r in window], headers={"X-Total-Count": str(len(robots))})
                    return
                body = self._body()
                name, level = body.get("name", ""), body.get("level")
                permissions = body.get("permissions") or []
                if not PROJECT_NAME.match(name) or level not in ("system", "project"):
                    self._error(400, "BAD_REQUEST", f"invalid robot name {name!r} or level {level!r}")
                    return
                if level == "project":
                    namespaces = {entry.get("namespace") for entry in permissions}
                    if len(namespaces) != 1 or next(iter(namespaces)) not in standin.projects:
                        self._error(400, "BAD_REQUEST", "a project robot needs the permissions of one existing project")
                        return
                    name = f"{next(iter(namespaces))}+{name}"
                full_name = f"robot${name}"
                if any(robot["name"] == full_name for robot in standin.robots.values()):
                    self._error(409, "CONFLICT", f"robot {full_name} already exists")
                    return
                robot_id = next(standin._ids)
                standin.robots[robot_id] = {
                    "id": robot_id,
                    "name": full_name,
                    "level": level,
                    "description": body.get("description", ""),
                    "duration": body.get("duration", -1),
                    "disable": bool(body.get("disable", False)),
                    "expires_at": -1,
                    "permissions": permissions,
                    "secret": secrets.token_urlsafe(24),
                }
                robot = standin.robots[robot_id]
                self._reply(
                    201,
                    {"id": robot_id, "name": full_name, "secret": robot["secret"], "expires_at": -1},
                    headers={"Location": f"/api/v2.0/robots/{robot_id}"},
                )

            def _robot(self, robot_id):
                robot = standin.robots.get(robot_id)
                if robot is None:
                    self._error(404, "NOT_FOUND", f"robot {robot_id} not found")
                elif self.command == "GET":
                    self._reply(200, self._shown(robot))
                elif self.command == "PUT":
                    body = self._body()
                    if body.get("name") != robot["name"] or body.get("level") != robot["level"]:
                        self._error(400, "BAD_REQUEST", "cannot update the name or level of a robot")
                        return
                    for key in ("description", "duration", "disable", "permissions"):
                        if key in body:
                            robot[key] = body[key]
                    self._reply(200)
                elif self.command == "PATCH":
                    robot["secret"] = self._body().get("secret") or secrets.token_urlsafe(24)
                    self._reply(200, {"secret": robot["secret"]})
                elif self.command == "DELETE":
                    del standin.robots[robot_id]
                    self._reply(200)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

        return Handler

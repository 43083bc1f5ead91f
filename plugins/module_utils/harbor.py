# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small clients for the registry v2 API (as Harbor and the distribution registry serve it) and for Harbor's
REST API v2.0.

Registry authentication follows what the registry asks for in its 401 answer: HTTP basic, or a bearer token
from the realm named in ``WWW-Authenticate`` (Harbor's ``/service/token``), fetched with the same credentials.
Harbor's REST API takes HTTP basic. Every failure is raised as ``RegistryError`` with a message an operator can
act on; the password never appears in a message.
"""

from __future__ import annotations

import re
import traceback

from ansible.module_utils.basic import env_fallback

try:
    import requests
except ImportError:  # the modules report it with missing_required_lib
    requests = None
    REQUESTS_IMPORT_ERROR = traceback.format_exc()
else:
    REQUESTS_IMPORT_ERROR = None

# The OCI distribution spec lets registries refuse manifests above 4 MiB; mooring reads no more than that.
MAX_MANIFEST_BYTES = 4 << 20
MANIFEST_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
INDEX_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)


class RegistryError(Exception):
    """A registry request failed; the message says why and what to do."""


def _parse_challenge(header):
    """Split a WWW-Authenticate header into its scheme and parameters."""
    scheme, rest = header.partition(" ")[::2]
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class _HttpClient:
    """Sends requests and turns transport failures into RegistryError messages that name the server."""

    def __init__(self, base_url, name, *, username=None, password=None, ca_cert=None, validate_certs=True, timeout=60):
        self.base_url = base_url.rstrip("/")
        self.registry = name
        self.username = username
        self.password = password
        self.timeout = timeout
        self.verify = (ca_cert or True) if validate_certs else False
        self.ca_cert = ca_cert
        self._session = requests.Session()
        self.plain_http_fallback = False

    def _send(self, method, url, headers, auth=None, **kwargs):
        try:
            return self._session.request(
                method, url, headers=headers, auth=auth, verify=self.verify, timeout=self.timeout, **kwargs
            )
        except requests.exceptions.SSLError as exc:
            if self.plain_http_fallback and not self.verify and url.startswith(self.base_url + "/"):
                # An insecure registry, as docker's insecure-registries treats one: https without verification
                # first, then plain http when the server does not speak TLS at all.
                self.base_url = "http://" + self.base_url.removeprefix("https://")
                return self._send(method, "http://" + url.removeprefix("https://"), headers, auth=auth, **kwargs)
            if "WRONG_VERSION_NUMBER" in str(exc):
                raise RegistryError(
                    f"{self.registry} does not speak TLS: an insecure (plain http) registry needs validate_certs=false"
                ) from exc
            hint = "" if self.ca_cert else "; give the registry's CA with ca_cert (or validate_certs=false)"
            raise RegistryError(f"the TLS certificate of {self.registry} is not trusted{hint}: {exc}") from exc
        except requests.exceptions.ConnectionError as exc:
            raise RegistryError(f"cannot reach the registry {self.registry}: {exc}") from exc
        except requests.exceptions.Timeout as exc:
            raise RegistryError(f"the registry {self.registry} did not answer within {self.timeout}s") from exc

    def _credentials_error(self):
        if not self.username:
            return RegistryError(f"the registry {self.registry} wants credentials; give username and password")
        return RegistryError(f"the registry {self.registry} rejected the credentials of user {self.username}")


class RegistryClient(_HttpClient):
    """Registry v2 API calls against one registry, host[:port], over https."""

    def __init__(self, registry, **options):
        super().__init__(f"https://{registry}", registry, **options)
        self.plain_http_fallback = True
        self._tokens = {}
        self._scheme = None
        self._bearer = None

    def _token(self, params, scope):
        key = ((params.get("realm"), params.get("service")), scope)
        if key not in self._tokens:
            query = {"service": params.get("service", "")}
            if scope:
                query["scope"] = scope
            auth = (self.username, self.password) if self.username else None
            answer = self._send("GET", params["realm"], {}, auth=auth, params=query)
            if answer.status_code in (401, 403):
                raise self._credentials_error()
            if answer.status_code != 200:
                raise RegistryError(f"the token service of {self.registry} answered {answer.status_code}")
            body = answer.json()
            self._tokens[key] = body.get("token") or body.get("access_token")
        return self._tokens[key]

    def request(self, method, path, scope=None, headers=None, stream=False):
        """Send a request, answering the registry's auth challenge once; return the response.

        Once the registry has said how it authenticates, later requests carry the credentials (or a cached
        token for the same scope) from the start, which saves a round trip each."""
        url = self.base_url + path
        headers = dict(headers or {})
        auth = None
        if self._scheme == "basic" and self.username:
            auth = (self.username, self.password)
        elif self._scheme == "bearer" and (self._bearer, scope) in self._tokens:
            headers["Authorization"] = f"Bearer {self._tokens[(self._bearer, scope)]}"
        answer = self._send(method, url, headers, auth=auth, stream=stream)
        if answer.status_code != 401:
            return answer
        scheme, params = _parse_challenge(answer.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer" and "realm" in params:
            self._scheme, self._bearer = "bearer", (params["realm"], params.get("service"))
            headers["Authorization"] = f"Bearer {self._token(params, params.get('scope', scope))}"
            answer = self._send(method, url, headers, stream=stream)
        elif self.username and auth is None:
            self._scheme = "basic"
            answer = self._send(method, url, headers, auth=(self.username, self.password), stream=stream)
        if answer.status_code == 401:
            raise self._credentials_error()
        return answer

    def _repository_error(self, answer, repository):
        project = repository.split("/", 1)[0]
        if answer.status_code == 403:
            return RegistryError(
                f"the registry {self.registry} denied access to {repository}: does project {project} exist, "
                f"and may user {self.username} use it? See mooring.ops.harbor_project"
            )
        return RegistryError(f"the registry {self.registry} answered {answer.status_code} for {repository}")

    def _manifest_request(self, method, repository, reference, stream=False):
        """A manifest request (HEAD or GET); None when the registry does not hold the manifest."""
        answer = self.request(
            method,
            f"/v2/{repository}/manifests/{reference}",
            scope=f"repository:{repository}:pull",
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            stream=stream,
        )
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise self._repository_error(answer, repository)
        return answer

    def manifest_digest(self, repository, reference):
        """The digest of a manifest (HEAD), or None when the registry does not hold it."""
        answer = self._manifest_request("HEAD", repository, reference)
        return answer.headers.get("Docker-Content-Digest") if answer is not None else None

    def manifest(self, repository, reference):
        """The manifest (GET) as a dict, or None when the registry does not hold it."""
        answer = self._manifest_request("GET", repository, reference)
        return answer.json() if answer is not None else None

    def manifest_raw(self, repository, reference):
        """(the manifest's bytes, its media type), or None when the registry does not hold it."""
        answer = self._manifest_request("GET", repository, reference, stream=True)
        if answer is None:
            return None
        # Read no more than a manifest can be: a registry is not trusted to send a small one.
        raw = b""
        for chunk in answer.iter_content(65536):
            raw += chunk
            if len(raw) > MAX_MANIFEST_BYTES:
                answer.close()
                raise RegistryError(
                    f"the registry {self.registry} sent more than {MAX_MANIFEST_BYTES} bytes for the manifest "
                    f"{repository}:{reference}; refused"
                )
        return raw, answer.headers.get("Content-Type", "").split(";")[0]

    def blob(self, repository, digest):
        """A streaming response for a blob (following the registry's redirect to its storage)."""
        answer = self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", scope=f"repository:{repository}:pull", stream=True
        )
        if answer.status_code == 404:
            raise RegistryError(f"the registry {self.registry} has no blob {digest} in {repository}")
        if answer.status_code != 200:
            raise self._repository_error(answer, repository)
        return answer

    def tag_digests(self, repository, reference, platform=("linux", "amd64")):
        """(manifest digest, config digest) of a tag from one GET, or (None, None) when the registry does not hold
        it. The config digest is the image ID; for an index it is the one of the platform's manifest."""
        answer = self._manifest_request("GET", repository, reference)
        if answer is None:
            return None, None
        digest = answer.headers.get("Docker-Content-Digest")
        manifest = answer.json()
        if manifest.get("mediaType") in INDEX_MEDIA_TYPES or "manifests" in manifest:
            wanted = [
                entry["digest"]
                for entry in manifest.get("manifests", [])
                if (entry.get("platform", {}).get("os"), entry.get("platform", {}).get("architecture")) == platform
            ]
            manifest = self.manifest(repository, wanted[0]) if wanted else None
        return digest, (manifest or {}).get("config", {}).get("digest")

    def delete_manifest(self, repository, digest):
        """Delete a manifest by digest (this removes every tag that points at it)."""
        answer = self.request("DELETE", f"/v2/{repository}/manifests/{digest}", scope=f"repository:{repository}:delete")
        if answer.status_code in (200, 202, 404):
            return answer.status_code != 404
        if answer.status_code == 405:
            raise RegistryError(
                f"the registry {self.registry} does not allow deleting manifests "
                "(distribution: storage.delete.enabled; Harbor: a project admin or robot with delete rights)"
            )
        raise self._repository_error(answer, repository)


def registry_credentials_spec():
    """User, password and TLS options shared by every module of the ``harbor`` action group.

    The user and password fall back to ``HARBOR_USERNAME`` and ``HARBOR_PASSWORD``, so that an AWX/AAP credential
    or a CI job's environment sets them once; ``module_defaults`` for ``group/mooring.ops.harbor`` does the same
    in a play.
    """
    return {
        "username": {"type": "str", "fallback": (env_fallback, ["HARBOR_USERNAME"])},
        "password": {"type": "str", "no_log": True, "fallback": (env_fallback, ["HARBOR_PASSWORD"])},
        "validate_certs": {"type": "bool", "default": True},
        "ca_cert": {"type": "path"},
    }


def harbor_api_argument_spec():
    """The connection options of the Harbor API modules (documented in the harbor_api doc fragment)."""
    return dict(
        registry_credentials_spec(),
        harbor_url={"type": "str", "required": True, "fallback": (env_fallback, ["HARBOR_URL"])},
        timeout={"type": "int", "default": 60},
    )


def registry_host(value):
    """``host[:port]`` from a registry name or a URL such as ``https://harbor.example.com``; ValueError otherwise."""
    host = re.sub(r"^https?://", "", value.strip()).rstrip("/")
    if not host or not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", host):
        raise ValueError(f"expected a registry host[:port] or https://host[:port] without a path, got {value!r}")
    return host


def check_harbor_url(module):
    if not module.params["harbor_url"].startswith(("http://", "https://")):
        module.fail_json(msg=f"harbor_url: expected an http(s) URL, got {module.params['harbor_url']!r}")


class HarborApiClient(_HttpClient):
    """Harbor's REST API v2.0 (``<harbor_url>/api/v2.0``), with HTTP basic auth."""

    def __init__(self, harbor_url, **options):
        name = re.sub(r"^https?://", "", harbor_url).rstrip("/")
        super().__init__(harbor_url, name, **options)

    @classmethod
    def from_params(cls, params):
        return cls(
            params["harbor_url"],
            username=params["username"],
            password=params["password"],
            ca_cert=params["ca_cert"],
            validate_certs=params["validate_certs"],
            timeout=params["timeout"],
        )

    def call(self, method, path, expected, body=None, params=None, by_name=False):
        """Call the API; return (status, parsed JSON or None). Fails on a status not in ``expected``."""
        headers = {"Accept": "application/json"}
        if by_name:
            headers["X-Is-Resource-Name"] = "true"
        auth = (self.username, self.password) if self.username else None
        answer = self._send(method, f"{self.base_url}/api/v2.0{path}", headers, auth=auth, json=body, params=params)
        if answer.status_code == 401:
            raise self._credentials_error()
        if answer.status_code == 403:
            raise RegistryError(f"Harbor at {self.registry} does not allow user {self.username} to {method} {path}")
        if answer.status_code not in expected:
            raise RegistryError(
                f"Harbor at {self.registry} answered {answer.status_code} to {method} {path}: {_error_text(answer)}"
            )
        try:
            return answer.status_code, answer.json() if answer.content else None
        except ValueError:
            return answer.status_code, None


def _error_text(answer):
    """Harbor's error messages ({"errors": [{"code", "message"}]}), or the raw body."""
    try:
        errors = answer.json().get("errors", [])
        return "; ".join(f"{error.get('code')}: {error.get('message')}" for error in errors) or answer.text
    except ValueError:
        return answer.text[:300]

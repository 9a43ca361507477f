"""A Kubernetes API client on kubernetes_asyncio: connection, JSON calls and watch streams (SPEC §8.5, §12.5).

kubernetes_asyncio is the library: it is kept by the community (generated from the API's OpenAPI with each
Kubernetes release), already the project's ``kube`` extra, runs on the loop's own aiohttp connections, and its
configuration loaders do the hard parts of connecting — kubeconfig contexts with client certificates, tokens and
exec/OIDC credential plugins, and the in-cluster service account with its rotating projected token. Lightkube
was the other candidate (smaller, httpx); it would add a second HTTP stack and its models are no use here: both
the Kubernetes provider and the scale executor want the objects as the API server sends them (camelCase JSON),
so this module uses the library's configured ``ApiClient.call_api`` with ``_preload_content=False`` and decodes
the JSON itself (no generated-model conversion, which costs most of the time on a 1,000-object list).

Connections (:func:`connect`): the given kubeconfig path; the in-cluster service account; ``$KUBECONFIG``;
``~/.kube/config`` — the first that exists (SPEC §12.5). :func:`connect_explicit` is the scale executor's
``api_url`` + ``token_file`` + ``ca_file`` (the token re-read on every call: projected tokens rotate).

kubernetes_asyncio and aiohttp are imported when a client is made, not with this module: the library's package
imports every generated API and model (~0.5 s, ~37 MiB), which only a configuration with the Kubernetes provider
or executor should pay, and never at ``validate`` time (:func:`find_source` reads only the environment and files).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # imported when a client is made: the generated client package costs ~0.5 s and ~37 MiB
    import aiohttp
    from kubernetes_asyncio.client import ApiClient, Configuration

#: the in-cluster service account (kubernetes_asyncio.config.incluster_config's names and paths)
SERVICE_HOST_ENV_NAME: Final = "KUBERNETES_SERVICE_HOST"
SERVICE_TOKEN_FILENAME: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SERVICE_CERT_FILENAME: Final = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
API_TIMEOUT: Final = 10.0  # per call; for a watch, up to the response head
WATCH_SECONDS: Final = 300  # asked of the server (timeoutSeconds): the stream then ends and the caller goes on
WATCH_READ_TIMEOUT: Final = WATCH_SECONDS + API_TIMEOUT  # a watch silent for longer is on a dead connection
MAX_TOKEN: Final = 64 * 1024
_BAD_TOKEN: Final = re.compile(r"[^\x21-\x7e]")


class KubeError(Exception):
    """A failed API call; ``status`` is the HTTP status (0: no response: refused, timed out, bad body)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeConfigError(Exception):
    """No usable connection configuration (the message says which sources were tried)."""


def default_kubeconfig() -> str:
    """The first path of ``$KUBECONFIG`` that exists, else ``~/.kube/config`` if it exists, else ""."""
    for path in os.environ.get("KUBECONFIG", "").split(os.pathsep):
        if path and os.path.isfile(os.path.expanduser(path)):
            return os.path.expanduser(path)
    home = os.path.expanduser("~/.kube/config")
    return home if os.path.isfile(home) else ""


def in_cluster() -> bool:
    """Whether the in-cluster service account can be used (the API's host in the environment, a token file)."""
    return bool(os.environ.get(SERVICE_HOST_ENV_NAME)) and os.path.isfile(SERVICE_TOKEN_FILENAME)


def find_source(kubeconfig: str) -> str | None:
    """The connection :func:`connect` would use, described ("kubeconfig <path>", "in-cluster service account"),
    or None when there is none. A given ``kubeconfig`` that does not exist is None (no fall-back to the others)."""
    if kubeconfig:
        return f"kubeconfig {kubeconfig}" if os.path.isfile(kubeconfig) else None
    if in_cluster():
        return "in-cluster service account"
    found = default_kubeconfig()
    return f"kubeconfig {found}" if found else None


async def connect(kubeconfig: str = "") -> KubeClient:
    """A client for the first connection source of SPEC §12.5; KubeConfigError when there is none or it is bad."""
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

    configuration = Configuration()
    if kubeconfig and not os.path.isfile(kubeconfig):
        raise KubeConfigError(f"kubeconfig {kubeconfig}: no such file")
    path = kubeconfig or ("" if in_cluster() else default_kubeconfig())
    try:
        if path:
            await load_kube_config(config_file=path, client_configuration=configuration, persist_config=False)
            source = f"kubeconfig {path}"
        elif in_cluster():
            load_incluster_config(client_configuration=configuration,  # type: ignore[no-untyped-call]
                                  token_filename=SERVICE_TOKEN_FILENAME, cert_filename=SERVICE_CERT_FILENAME)
            source = "in-cluster service account"
        else:
            raise KubeConfigError(
                f"no Kubernetes connection: no in-cluster service account ({SERVICE_HOST_ENV_NAME} unset or "
                f"{SERVICE_TOKEN_FILENAME} missing), $KUBECONFIG and ~/.kube/config do not exist"
            )
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as e:
        raise KubeConfigError(f"{path or 'in-cluster service account'}: {e}") from e
    return KubeClient(configuration, source)


def connect_explicit(api_url: str, token_file: str, ca_file: str) -> KubeClient:
    """A client for ``api_url`` with the bearer token of ``token_file`` (re-read before every call; no file: no
    token) and the CA bundle ``ca_file`` (when it exists; else the system's)."""
    from kubernetes_asyncio.client import Configuration

    configuration = Configuration(host=api_url.rstrip("/"))
    if os.path.isfile(ca_file):
        configuration.ssl_ca_cert = ca_file

    def authorization() -> str:
        try:
            # a small local file, read synchronously on purpose: re-read every call because tokens rotate
            with open(token_file, "rb") as f:
                token = f.read(MAX_TOKEN).decode("latin-1").strip()
        except OSError:
            return ""  # no token: out of cluster against a proxy, or anonymous access
        if _BAD_TOKEN.search(token):
            raise KubeError(f"kubernetes token file {token_file}: token has invalid characters")
        return f"Bearer {token}" if token else ""

    return KubeClient(configuration, f"api_url {api_url}", authorization)


def status_message(body: bytes) -> str:
    """': <message>' of a Kubernetes Status body (or the start of any other body), '' when empty."""
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return f": {status['message']}"
    text = body[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:  # also UnicodeDecodeError
        raise KubeError(f"{what}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise KubeError(f"{what}: JSON is not an object")
    return value


Query = Sequence[tuple[str, str]]


class Watch:
    """One open watch stream: :meth:`next` gives its events (``{"type", "object"}``) and None at its end."""

    def __init__(self, response: aiohttp.ClientResponse, what: str) -> None:
        self._response = response
        self.what = what

    async def next(self) -> dict[str, Any] | None:
        import aiohttp
        from aiohttp.http_exceptions import HttpProcessingError

        while True:
            try:
                # our own deadline too: with aiohttp's C parser, a framing error in the middle of a body leaves the
                # reader waiting past the session's read timeout (even after the server closed the connection)
                line = await asyncio.wait_for(self._response.content.readline(), WATCH_READ_TIMEOUT)
            except asyncio.TimeoutError:  # aiohttp's read timeout or ours
                raise KubeError(f"{self.what}: no event or bookmark for {WATCH_READ_TIMEOUT:g}s") from None
            except (aiohttp.ClientError, HttpProcessingError, ValueError, OSError) as e:  # ValueError: line too long
                raise KubeError(f"{self.what}: reading events: {e or type(e).__name__}") from e
            if not line:
                return None
            if not line.endswith(b"\n"):
                raise KubeError(f"{self.what}: the stream ended inside an event")
            if line.strip():
                return json_object(line, self.what)

    def close(self) -> None:
        self._response.close()


class KubeClient:
    """Calls to one API server. ``source`` says where the connection came from (for logs)."""

    def __init__(self, configuration: Configuration, source: str,
                 authorization: Callable[[], str] | None = None) -> None:
        self.configuration = configuration
        self.source = source
        #: the Authorization header of each call ("" = none); None: the configuration's credentials
        self._authorization = authorization
        self._api: ApiClient | None = None

    @property
    def host(self) -> str:
        return str(self.configuration.host)

    def _client(self) -> ApiClient:
        if self._api is None:  # made on first use: aiohttp's session belongs to the running loop
            from kubernetes_asyncio.client import ApiClient

            self._api = ApiClient(self.configuration)
        return self._api

    async def _call(self, method: str, path: str, query: Query, body: object, content_type: str,
                    timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        import aiohttp

        what = f"kubernetes {method} {self.host}{path}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        auth = ["BearerToken"]
        if self._authorization is not None:
            auth = []
            value = self._authorization()
            if value:
                headers["Authorization"] = value
        try:
            response: aiohttp.ClientResponse = await self._client().call_api(
                path, method, query_params=list(query), header_params=headers,
                body=body, auth_settings=auth, _preload_content=False, _request_timeout=timeout,
            )
        except asyncio.TimeoutError:
            raise KubeError(f"{what}: timed out after {API_TIMEOUT:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:  # refused, reset, TLS (ssl errors are OSErrors)
            raise KubeError(f"{what}: {e or type(e).__name__}") from e
        if response.status != 200:
            try:
                message = status_message(await response.content.read(64 * 1024))
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                message = ""
            response.close()
            raise KubeError(f"{what}: status {response.status}{message}", response.status)
        return response

    async def request(self, method: str, path: str, query: Query = (), body: object = None,
                      content_type: str = "application/json") -> dict[str, Any]:
        """One call; its JSON object. ``body`` is sent as JSON. KubeError on failure (``status`` set for a reply)."""
        import aiohttp

        response = await self._call(method, path, query, body, content_type,
                                    aiohttp.ClientTimeout(total=API_TIMEOUT))
        what = f"kubernetes {method} {self.host}{path}"
        try:
            data = await response.read()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise KubeError(f"{what}: reading the response: {e or type(e).__name__}") from e
        finally:
            response.release()
        return json_object(data, what)

    async def list(self, path: str, query: Query = ()) -> dict[str, Any]:
        return await self.request("GET", path, query)

    async def watch(self, path: str, query: Query, version: str, bookmarks: bool = True) -> Watch:
        """Open a watch of ``path`` from ``version`` (KubeError with status 410 when that version is gone)."""
        import aiohttp

        params = [*query, ("watch", "1"), ("resourceVersion", version), ("timeoutSeconds", str(WATCH_SECONDS))]
        if bookmarks:
            params.append(("allowWatchBookmarks", "true"))
        timeout = aiohttp.ClientTimeout(connect=API_TIMEOUT, sock_connect=API_TIMEOUT, sock_read=WATCH_READ_TIMEOUT)
        response = await self._call("GET", path, params, None, "application/json", timeout)
        return Watch(response, f"kubernetes watch {self.host}{path}")

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, (), dict(patch), "application/merge-patch+json")

    async def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await api.close()



"""Who asked the stand-in what, as Kubernetes' authorizer sees each request: the caller, the
verb, the resource (with its subresource, ``pods/log``) and the namespace.

The stand-in authenticates nobody, so the caller is the bearer token a request carries: a test
names a caller by the token of the kubeconfig it gives it (:meth:`KubeStandIn.kubeconfig_for`)
and holds that caller's requests against the RBAC rules it would have on a cluster. Only the
distinct requests are kept, so a long watch loop costs nothing more.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

ANONYMOUS = "system:anonymous"
# /api/v1 (the core group) or /apis/GROUP/VERSION, then [namespaces/NS/]RESOURCE[/NAME[/SUB]].
_RESOURCE_PATH = re.compile(
    r"^/(?:api/v1|apis/[^/]+/[^/]+)/(?:namespaces/(?P<namespace>[^/]+)/(?=[^/]))?"
    r"(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<subresource>[^/]+))?)?/?$")
_WRITES = {"POST": "create", "PUT": "update", "PATCH": "patch"}

Request = tuple[str, str, str, str, str]  # user, verb, resource, namespace, non-resource path


class Audit:
    """The distinct requests received, by caller."""

    def __init__(self) -> None:
        self.seen: set[Request] = set()

    def record(self, request: web.Request) -> None:
        self.seen.add(attributes(request))

    def requests(self, user: str | None = None) -> list[dict[str, str]]:
        """Every distinct request (of ``user`` alone, when given), sorted."""
        return [{"user": u, "verb": v, "resource": r, "namespace": ns, "path": p}
                for u, v, r, ns, p in sorted(self.seen) if user is None or u == user]


AUDIT: web.AppKey[Audit] = web.AppKey("audit", Audit)


def attributes(request: web.Request) -> Request:
    """The request as RBAC reads it; a path outside the API groups (``/version``) is a
    non-resource request, with its path and no resource."""
    auth = request.headers.get("Authorization", "")
    user = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ANONYMOUS
    match = _RESOURCE_PATH.match(request.path)
    if match is None:
        return user, request.method.lower(), "", "", request.path
    resource = match["resource"]
    if match["subresource"]:
        resource = f"{resource}/{match['subresource']}"
    verb = _verb(request, named=match["name"] is not None)
    return user, verb, resource, match["namespace"] or "", ""


def _verb(request: web.Request, *, named: bool) -> str:
    if request.method in ("GET", "HEAD"):
        if request.query.get("watch", "").lower() in ("1", "true"):
            return "watch"
        return "get" if named else "list"
    if request.method == "DELETE":
        return "delete" if named else "deletecollection"
    return _WRITES.get(request.method, request.method.lower())


@web.middleware
async def audit(request: web.Request, handler: Any) -> web.StreamResponse:
    """Record every API request (not the stand-in's own ``/_standin`` routes) as it comes."""
    if not request.path.startswith("/_standin"):
        request.app[AUDIT].record(request)
    response: web.StreamResponse = await handler(request)
    return response

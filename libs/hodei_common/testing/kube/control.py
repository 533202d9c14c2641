"""The stand-in's own routes under ``/_standin``: faults to inject, what was received and
who asked what."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hodei_common.testing.kube.apiserver import CLUSTER
from hodei_common.testing.kube.audit import AUDIT
from hodei_common.testing.kube.errors import bad_request

PREFIX = "/_standin"


async def _args(request: web.Request) -> dict[str, Any]:
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict):
        raise bad_request("the body must be an object")
    return body


async def fail_creates(request: web.Request) -> web.Response:
    """The next ``count`` pod creates answer ``status`` with a Status body."""
    args = await _args(request)
    faults = request.app[CLUSTER].faults
    faults.failing_creates = int(args.get("count", 1))
    faults.create_status = int(args.get("status", 500))
    return web.json_response({"failing_creates": faults.failing_creates})


async def drop_watches(request: web.Request) -> web.Response:
    return web.json_response({"dropped": request.app[CLUSTER].store.drop_watches()})


async def expire_watches(request: web.Request) -> web.Response:
    return web.json_response({"expired": request.app[CLUSTER].store.expire_watches()})


async def watches(request: web.Request) -> web.Response:
    return web.json_response({"open": len(request.app[CLUSTER].store.watchers)})


async def evict(request: web.Request) -> web.Response:
    args = await _args(request)
    pod = request.app[CLUSTER].evict(str(args["namespace"]), str(args["name"]))
    return web.json_response(pod)


async def received(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    bodies = request.app[CLUSTER].faults.received.get(kind)
    if bodies is None:
        raise bad_request(f"only pods and secrets are kept, not {kind}")
    return web.json_response(bodies)


async def requests(request: web.Request) -> web.Response:
    """The distinct API requests received, of ``?user=`` alone when given."""
    return web.json_response(request.app[AUDIT].requests(request.query.get("user")))


def routes(app: web.Application) -> None:
    """Add the control routes to ``app``."""
    r = app.router
    r.add_post(f"{PREFIX}/fail-creates", fail_creates)
    r.add_post(f"{PREFIX}/drop-watches", drop_watches)
    r.add_post(f"{PREFIX}/expire-watches", expire_watches)
    r.add_post(f"{PREFIX}/evict", evict)
    r.add_get(f"{PREFIX}/watches", watches)
    r.add_get(f"{PREFIX}/received/{{kind}}", received)
    r.add_get(f"{PREFIX}/requests", requests)

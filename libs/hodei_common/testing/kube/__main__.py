"""Run the Kubernetes stand-in: ``python -m hodei_common.testing.kube --dir DIR``.

Writes ``DIR/kubeconfig`` and then ``DIR/ready`` (the port); stops on SIGTERM, removing every
container it made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import uuid
from pathlib import Path

import docker
from aiohttp import web

from hodei_common.testing.kube import apiserver, audit, control
from hodei_common.testing.kube.cluster import Cluster

CONTEXT = "hodei-standin"
TOKEN = "hodei-standin-token"  # a fixed test credential: nothing checks it


def kubeconfig(url: str) -> str:
    """A kubeconfig with one cluster, user and context, all named ``hodei-standin``."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT,
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": {"token": TOKEN}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT,
                                                    "namespace": "default"}}],
        "preferences": {},
    }, indent=2)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hodei_common.testing.kube")
    parser.add_argument("--dir", type=Path, required=True, help="where kubeconfig and ready go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--instance", default=uuid.uuid4().hex[:10],
                        help="the value of the hodei.standin label on its containers")
    parser.add_argument("--cpu", default="4")
    parser.add_argument("--memory", default="8Gi")
    parser.add_argument("--pods", default="110")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT."""
    engine = docker.from_env(max_pool_size=64)
    capacity = {"cpu": args.cpu, "memory": args.memory, "pods": args.pods,
                "ephemeral-storage": "100Gi"}
    cluster = Cluster(engine, args.instance, capacity)
    app = web.Application(middlewares=[audit.audit, apiserver.errors])
    app[apiserver.CLUSTER] = cluster
    app[audit.AUDIT] = audit.Audit()
    apiserver.routes(app)
    control.routes(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    # Open watches hold the shutdown for this long at most.
    site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=0.5)
    await site.start()
    port = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / "kubeconfig").write_text(kubeconfig(f"http://{args.host}:{port}"))
    (args.dir / "ready.tmp").write_text(json.dumps({"port": port, "instance": args.instance}))
    (args.dir / "ready.tmp").rename(args.dir / "ready")
    try:
        await stop.wait()
    finally:
        cluster.store.end_watches()
        await cluster.kubelet.shutdown()
        await runner.cleanup()
        engine.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(_parse(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()

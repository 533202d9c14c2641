"""A stand-in for the worker agent, run by the local provider in the provisioner tests.

It registers with the token from its environment, prints the reply, then (``--then``):
``wait`` until killed (the default), or ``exit``. ``--no-register`` skips registering, so a
test can present the token itself; ``--ignore-term`` makes SIGTERM do nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

import nats

from hodei_common.contracts import subjects


async def register() -> None:
    nc = await nats.connect(os.environ["HODEI_NATS_URL"])
    try:
        body = {
            "worker_id": os.environ["HODEI_WORKER_ID"],
            "token": os.environ["HODEI_BOOTSTRAP_TOKEN"],
            "hostname": "fake-host",
            "pid": os.getpid(),
        }
        msg = await nc.request(subjects.WORKER_REGISTER, json.dumps(body).encode(), timeout=10)
        print("reply", json.dumps({"headers": msg.headers or {}, "data": msg.data.decode()}),
              flush=True)
    finally:
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--then", choices=["wait", "exit"], default="wait")
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("started", flush=True)
    if not args.no_register:
        await register()
    if args.then == "wait":
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

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
from nats.aio.client import RawCredentials

from hodei_common.contracts import subjects
from hodei_common.natsauth import KeyKind, NKey


async def register() -> None:
    """Register as the real agent does: over its bootstrap credentials, with a key of its
    own."""
    worker_id = os.environ["HODEI_WORKER_ID"]
    key = NKey.create(KeyKind.USER).public_key
    nc = await nats.connect(
        os.environ["HODEI_NATS_URL"],
        user_credentials=RawCredentials(os.environ["HODEI_BOOTSTRAP_CREDS"]),
        inbox_prefix=subjects.inbox_prefix(subjects.agent_identity(worker_id)))
    try:
        body = {
            "worker_id": worker_id,
            "token": os.environ["HODEI_BOOTSTRAP_TOKEN"],
            "hostname": "fake-host",
            "pid": os.getpid(),
            "public_key": key,
        }
        print("key", key, flush=True)
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

"""Revocations benchmark: what revoking ended agents' NATS users costs as the list grows.

Every ended worker's agent key stays in the platform account's JWT until its last JWT
expires, so the list holds about (workers ended per second) x (agent JWT lifetime + 60 s)
keys. For each size this starts from, it signs the account's JWT with that many revoked keys
and pushes it to a real nats-server (operator mode) as the provisioner does, and prints the
JWT's size, the time to sign and the time to push (the server's reply), the median of
``--rounds`` pushes, plus the ended workers per second that size allows at the default
lifetime (600 s). Nothing here asserts a time.

    .venv/bin/python bench/revocations.py [--sizes 100,1000,5000] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client as NATS

from hodei_common.embedded import NatsServer
from hodei_common.natsauth import KeyKind, NKey, Trust, permissions
from hodei_common.natsauth.revoker import RevocationError, Revoker

LIFETIME_S = 600.0
CLOCK_SLACK_S = 60.0


async def measure(url: str, trust: Trust, directory: Path, sizes: list[int], rounds: int
                  ) -> list[dict[str, float]]:
    user = trust.system_user(permissions.revoker())
    creds = user.write(directory / "revoker.creds")
    nc = NATS()
    await nc.connect(url, user_credentials=str(creds), inbox_prefix=user.inbox_prefix)
    revoker = Revoker(trust.platform_account, nc, timeout_s=30.0)
    figures = []
    try:
        for size in sizes:
            until = int(time.time()) + int(LIFETIME_S)
            keys = {NKey.create(KeyKind.USER).public_key: until for _ in range(size)}
            signs, pushes = [], []
            token = ""
            for _ in range(rounds):
                start = time.perf_counter()
                token = trust.platform_account.jwt(keys)
                signs.append(time.perf_counter() - start)
                start = time.perf_counter()
                try:
                    await revoker.push(keys)
                except RevocationError as e:
                    print(f"{size} revoked: {e}")
                    return figures
                pushes.append(time.perf_counter() - start)
            figures.append({
                "revoked": size, "jwt_bytes": len(token),
                "sign_ms": statistics.median(signs) * 1000,
                "push_ms": statistics.median(pushes) * 1000,
                "ended_per_s_at_600s": size / (LIFETIME_S + CLOCK_SLACK_S),
                "max_payload": nc.max_payload})
    finally:
        await nc.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000,10000,12000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="hodei-bench-revoke-"))
    trust = Trust.create()
    server = NatsServer(root / "nats", auth=trust)
    server.start()
    try:
        figures = asyncio.run(measure(server.url, trust, root, sizes, args.rounds))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'revoked':>8} {'JWT bytes':>10} {'sign ms':>8} {'push ms':>8} "
          f"{'ended/s at 600 s':>17}")
    for f in figures:
        print(f"{f['revoked']:>8} {f['jwt_bytes']:>10} {f['sign_ms']:>8.1f} "
              f"{f['push_ms']:>8.1f} {f['ended_per_s_at_600s']:>17.1f}")
    print(f"a message to nats-server holds at most {figures[0]['max_payload']} bytes")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""The platform as production runs it: each service its own OS process (``python -m``),
against a real nats-server and PostgreSQL, with real agents; for the chaos tests and the
recovery benchmark, which kill those processes with SIGKILL and start them again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NATS

from hodei_common.contracts import subjects
from hodei_common.embedded import NatsServer, PostgresServer
from hodei_common.natsauth import Trust, permissions

# Service name -> the module that runs it.
SERVICE_MODULES = {
    "api": "hodei_api",
    "relay": "hodei_common.relay",
    "scheduler": "hodei_scheduler",
    "provisioner": "hodei_provisioner",
    "supervisor": "hodei_supervisor",
    "logs": "hodei_logs",
}
DATABASE = "hodei"
TEST_IDENTITY = "hodei-test"  # a test's own NATS user, as in the pytest plugin


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def agent_processes(nats_url: str, *, templates: bool = False) -> list[int]:
    """Pids of live agents of the platform at ``nats_url`` (other platforms may be running),
    and with ``templates`` the local provider's agent templates too."""
    wanted = f"HODEI_NATS_URL={nats_url}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        # A forked agent shares its template's command line and environment, not its name.
        template = b"hodei_agent.template" in cmd and comm != "hodei-agent"
        if (b"hodei_agent" in cmd and state != "Z" and wanted in environ
                and (templates or not template)):
            found.append(int(entry.name))
    return found


@dataclass
class ServiceProcesses:
    """The six services as child processes; ``revive()`` restarts any that exited, as a
    restart policy (Compose's ``unless-stopped``, a Deployment) would."""

    env: dict[str, str]
    logs_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> None:
        with (self.logs_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", SERVICE_MODULES[name]], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self, name: str) -> None:
        """SIGKILL the service, by its pid, and reap it."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def revive(self) -> list[str]:
        """Start again every service that is not running; their names."""
        revived = [name for name, proc in self.procs.items() if proc.poll() is not None]
        for name in revived:
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.start(name)
        return revived

    def stop_all(self, timeout_s: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class ProcessPlatform:
    """nats-server, PostgreSQL and the services, each a process of its own."""

    root: Path
    nats: NatsServer
    postgres: PostgresServer
    services: ServiceProcesses
    creds_dir: Path  # each service's NATS credentials, and the test's own

    @property
    def nats_url(self) -> str:
        return self.nats.url

    async def connect(self, **options: Any) -> NATS:
        """A NATS connection as the test's own user (``options`` go to nats-py)."""
        return await nats.connect(
            self.nats_url, user_credentials=str(self.creds_dir / f"{TEST_IDENTITY}.creds"),
            inbox_prefix=subjects.inbox_prefix(TEST_IDENTITY), **options)

    @property
    def database_url(self) -> str:
        return self.postgres.url(DATABASE)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every service answers ``$SRV.PING``."""
        nc = await self.connect()
        try:
            deadline = time.monotonic() + timeout_s
            for name in SERVICE_MODULES:
                while True:
                    try:
                        await nc.request(f"$SRV.PING.{subjects.service_name(name)}", b"",
                                         timeout=0.5)
                        break
                    except (nats.errors.Error, TimeoutError):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"the {name} service is not up") from None
                        self.services.revive()
                        await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def restart_nats(self, down_s: float = 1.0) -> None:
        """Kill nats-server -9 and start it again on the same port and store."""
        self.nats.kill()
        time.sleep(down_s)
        self.nats.start()

    def restart_postgres(self, down_s: float = 1.0) -> None:
        """Kill PostgreSQL -9 and start it again on the same port and data."""
        self.postgres.kill()
        time.sleep(down_s)
        self.postgres.start()

    def stop(self, *, keep: bool = False) -> None:
        """Stop everything; remove the data and logs unless ``keep``."""
        self.services.stop_all()
        self.nats.stop()
        self.postgres.stop()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


async def _create_database(server: PostgresServer) -> None:
    from hodei_migrations import migrate

    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(server.url(DATABASE))
    try:
        await migrate(conn)
    finally:
        await conn.close()


def start_process_platform(extra_env: dict[str, str] | None = None) -> ProcessPlatform:
    """Start nats-server, a migrated PostgreSQL and the six services as processes."""
    root = Path(tempfile.mkdtemp(prefix="hodei-procs-"))
    root.chmod(0o755)  # PostgreSQL runs unprivileged when this runs as root
    trust = Trust.create()
    trust.save(root / "keys")
    creds_dir = root / "creds"
    trust.write_creds(creds_dir)
    trust.user(permissions.everything(TEST_IDENTITY)).write(creds_dir / f"{TEST_IDENTITY}.creds")
    nats_server = NatsServer(root / "nats", auth=trust)
    nats_server.start()
    # Durable, as production runs it: a server killed -9 keeps every commit it acknowledged
    # (with synchronous_commit off it may not, and a lost assignment commit runs a job twice).
    postgres = PostgresServer(root / "postgres", durable=True)
    postgres.start()
    asyncio.run(_create_database(postgres))
    (root / "logs").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env |= {"HODEI_NATS_URL": nats_server.url, "HODEI_DATABASE_URL": postgres.url(DATABASE),
            "HODEI_HOME": str(root / "home"), "HODEI_CREDS_DIR": str(creds_dir),
            # Only the provisioner uses these: it mints its agents' NATS users, and revokes
            # those of ended workers.
            "HODEI_NATS_SIGNING_KEY": str(trust.signing_key_file(root / "keys")),
            "HODEI_NATS_OPERATOR_KEY": str(trust.operator_key_file(root / "keys")),
            "HODEI_NATS_SYSTEM_CREDS": str(trust.write_revoker_creds(root / "keys")),
            **(extra_env or {})}
    services = ServiceProcesses(env, root / "logs")
    platform = ProcessPlatform(root, nats_server, postgres, services, creds_dir)
    for name in SERVICE_MODULES:
        services.start(name)
    try:
        asyncio.run(platform.wait_ready())
    except BaseException:
        platform.stop()
        raise
    return platform

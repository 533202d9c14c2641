"""An embedded PostgreSQL: system server binaries when present, else the pgserver package's.

The cluster lives in ``root/data`` with its log in ``root/postgres.log``. PostgreSQL refuses to
run as root, so as root the cluster runs as an unprivileged user (``postgres`` when it exists,
else ``nobody``); when that user cannot reach ``root`` (a home under /root), the cluster lives in
/var/lib/hodei/<hash> and ``root`` is a link to it.

Connections need the superuser's password (SCRAM-SHA-256, local and host lines alike): anyone
on the machine, a job's code among them, reaches 127.0.0.1, and the ``jobs`` table holds
secrets. The password is made on first start and kept in ``root/password`` (mode 0600,
owned by whoever runs the platform); ``url()`` carries it. A cluster made before passwords
(trust auth, no password file) is upgraded at its next start, before its server listens:
the password is set in single-user mode and ``pg_hba.conf`` rewritten to scram-sha-256
(``hodei_common.embedded.postgres_auth``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

from hodei_common.embedded import postgres_auth
from hodei_common.embedded.process import (
    ChildServer,
    EmbeddedServerError,
    free_port,
    port_open,
    wait_until,
)

SUPERUSER = "hodei"
SHARED_ROOT_DIR = Path("/var/lib/hodei")


def postgres_bindir() -> Path:
    """Where initdb and postgres are: $HODEI_PG_BINDIR, newest system server, PATH, pgserver."""
    override = os.environ.get("HODEI_PG_BINDIR")
    if override:
        return Path(override)
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0),
    )
    if system:
        return system[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "initdb").exists():
            return bundled
    raise EmbeddedServerError(
        "no PostgreSQL server binaries found: install postgresql (apt-get install postgresql) "
        "or `pip install pgserver`, or set HODEI_PG_BINDIR"
    )


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL under when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedServerError("running as root and no unprivileged user to run PostgreSQL as")


class PostgresServer(ChildServer):
    """A PostgreSQL cluster in ``root/data`` listening on 127.0.0.1 only, password auth."""

    # Fast shutdown: roll back open transactions, checkpoint, exit.
    stop_signal = signal.SIGINT
    stop_timeout_s = 30.0

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        durable: bool = True,
        max_connections: int = 200,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(die_with_parent=die_with_parent)
        self.port = port or 0
        self.durable = durable
        self.max_connections = max_connections
        self.user = _run_as()
        self.root = self._placed(root)
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self._password: str | None = None

    def _placed(self, root: Path) -> Path:
        """As root, keep the cluster where its user can reach it and link it from ``root``."""
        if self.user is None or _reachable_by(root.parent, self.user):
            return root
        digest = hashlib.sha256(str(root.absolute()).encode()).hexdigest()[:12]
        target = SHARED_ROOT_DIR / digest
        root.parent.mkdir(parents=True, exist_ok=True)
        if not root.is_symlink():
            if root.exists():
                raise EmbeddedServerError(
                    f"{root} exists but PostgreSQL (user {self.user.pw_name}) cannot reach it"
                )
            root.symlink_to(target)
        return target

    @property
    def password(self) -> str:
        """The superuser's password, from ``root/password`` (made by ``init``)."""
        if self._password is None:
            self._password = postgres_auth.read_password(self.root)
            if self._password is None:
                raise EmbeddedServerError(
                    f"PostgreSQL in {self.root} has no password yet: start it first")
        return self._password

    def url(self, database: str = "postgres") -> str:
        """The URL to connect as the superuser, password included: keep it out of logs."""
        password = quote(self.password, safe="")
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def _popen_user(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster (initdb) with its password when it does not exist yet; give
        one made before passwords its password. The server must not be running."""
        self._prepare_dirs()
        if self.initialized():
            if postgres_auth.read_password(self.root) is None:
                self._require_password()
            return
        if postgres_auth.read_password(self.root) is None:
            postgres_auth.write_password(self.root, postgres_auth.new_password())
        self._password = None
        with postgres_auth.pwfile_for(self.root, self.user) as pwfile:
            args = [
                str(postgres_bindir() / "initdb"),
                "-D", str(self.data_dir),
                "-U", SUPERUSER,
                f"--auth={postgres_auth.AUTH_METHOD}",
                f"--pwfile={pwfile}",
                "-E", "UTF8",
                "--locale=C",
            ]
            if not self.durable:
                args.append("--no-sync")
            result = subprocess.run(
                args, capture_output=True, text=True, check=False, **self._popen_user()  # type: ignore[call-overload]
            )
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed: {result.stderr.strip()[-2000:]}")

    def _require_password(self) -> None:
        """Upgrade a trust-auth cluster: set a new password offline, rewrite pg_hba.conf,
        and only then keep the password file, so an upgrade cut short is done again."""
        password = postgres_auth.new_password()
        postgres_auth.set_password_offline(
            postgres_bindir() / "postgres", self.data_dir, SUPERUSER, password,
            self._popen_user(),
        )
        postgres_auth.require_password_in_hba(self.data_dir / "pg_hba.conf")
        postgres_auth.write_password(self.root, password)
        self._password = None

    def start(self, timeout_s: float = 60.0) -> None:
        """initdb when needed, start the server, and wait until it accepts connections."""
        self.init()
        if not self.port:
            self.port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
            "shared_buffers": "128MB",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(postgres_bindir() / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._proc = self._launch(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, **self._popen_user()
            )
        finally:
            os.close(log)
        assert self._proc is not None
        wait_until(
            self._accepting,
            self._proc,
            what="PostgreSQL",
            log_file=self.log_file,
            timeout_s=timeout_s,
        )

    def _accepting(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        isready = postgres_bindir() / "pg_isready"
        if not isready.exists():
            return True
        result = subprocess.run(
            [str(isready), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER],
            check=False,
        )
        return result.returncode == 0


def _reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can traverse every directory down to ``path`` (ignoring ACLs)."""
    path = path.resolve()
    for part in [*reversed(path.parents), path]:
        if not part.exists():
            continue
        st = part.stat()
        if st.st_uid == user.pw_uid:
            mode_bit = 0o100
        elif st.st_gid == user.pw_gid:
            mode_bit = 0o010
        else:
            mode_bit = 0o001
        if not st.st_mode & mode_bit:
            return False
    return True

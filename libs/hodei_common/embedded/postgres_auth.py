"""The embedded PostgreSQL's superuser password: its file, initdb's copy, and the upgrade.

The password lives in ``root/password`` (mode 0600, owned by whoever runs the platform);
PostgreSQL keeps only its SCRAM verifier and never reads the file. A cluster made before
passwords (trust auth, no file) is upgraded offline, before its server starts: the password
is set in single-user mode (no connection, so nobody can slip in while it still trusts) and
``pg_hba.conf`` is rewritten to ``scram-sha-256``. The file is written last, so an upgrade
cut short is simply done again at the next start; the same path sets a new password should
the file be lost.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hodei_common.embedded.process import EmbeddedServerError

PASSWORD_FILE = "password"
AUTH_METHOD = "scram-sha-256"
MASK = "***"

# A connection line of pg_hba.conf whose method is trust: type, then fields, then "trust".
_TRUST_LINE = re.compile(r"^(\s*(?:local|host\w*)\s.*?)\btrust\b(\s*(?:#.*)?)$")


def password_path(root: Path) -> Path:
    return root / PASSWORD_FILE


def read_password(root: Path) -> str | None:
    """The stored password, or None when there is no password file."""
    try:
        return password_path(root).read_text().strip() or None
    except FileNotFoundError:
        return None


def new_password() -> str:
    # URL-safe, so it needs no quoting in SQL either (still quoted where it is used).
    return secrets.token_urlsafe(32)


def write_password(root: Path, password: str) -> None:
    """Write the password file atomically, readable by its owner only."""
    _write_private(password_path(root), password + "\n")


def _write_private(path: Path, text: str, *, owner: pwd.struct_passwd | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        if owner is not None:
            os.fchown(f.fileno(), owner.pw_uid, owner.pw_gid)
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


@contextlib.contextmanager
def pwfile_for(root: Path, user: pwd.struct_passwd | None) -> Iterator[Path]:
    """A file initdb, run as ``user``, can read the password from; removed once it ran.

    As ourselves, that is the password file itself. As another user (we are root) it is a
    copy of its own, 0600, in ``root``, which that user owns anyway.
    """
    if user is None:
        yield password_path(root)
        return
    copy = root / ".initdb-password"
    password = read_password(root)
    assert password is not None
    try:
        _write_private(copy, password + "\n", owner=user)
        yield copy
    finally:
        copy.unlink(missing_ok=True)


def require_password_in_hba(hba: Path) -> bool:
    """Turn every trust line of ``pg_hba.conf`` to scram-sha-256; whether any changed.

    The file keeps its owner and mode (PostgreSQL's user must still read it).
    """
    text = hba.read_text()
    lines = [_TRUST_LINE.sub(rf"\g<1>{AUTH_METHOD}\g<2>", line) for line in text.splitlines()]
    rewritten = "\n".join(lines) + "\n"
    if rewritten == text:
        return False
    st = hba.stat()
    tmp = hba.with_name(f".{hba.name}.tmp")
    tmp.write_text(rewritten)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o777)
    tmp.replace(hba)
    return True


def set_password_offline(
    postgres: Path, data_dir: Path, role: str, password: str, popen_user: dict[str, Any]
) -> None:
    """Set ``role``'s password in single-user mode (the server must not be running).

    The statement goes through stdin, never the command line; should it fail, the error
    (which may quote the statement) is told with the password masked.
    """
    literal = password.replace("'", "''")
    quoted_role = role.replace('"', '""')
    statement = f"ALTER ROLE \"{quoted_role}\" PASSWORD '{literal}'\n"
    result = subprocess.run(
        [str(postgres), "--single", "-D", str(data_dir),
         "-c", f"password_encryption={AUTH_METHOD}",
         "-c", "exit_on_error=on",
         "-c", "log_statement=none",
         "postgres"],
        input=statement, capture_output=True, text=True, check=False,
        **popen_user,
    )
    if result.returncode != 0:
        detail = masked(result.stderr.strip()[-2000:], password)
        raise EmbeddedServerError(f"could not set the PostgreSQL superuser's password: {detail}")


def masked(text: str, password: str) -> str:
    """``text`` with every occurrence of ``password`` replaced by ``***``."""
    return text.replace(password, MASK) if password else text

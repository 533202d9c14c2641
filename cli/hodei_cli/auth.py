"""``hodei auth create-user``: a creds file for a person or program, in one namespace.

Users are minted with the account's signing key, which only an operator holds (the embedded
platform keeps it under ``$HODEI_HOME/auth/keys``): whoever has that key decides who may do
what. A user publishes to its own namespace's job endpoints only; an admin to every
namespace's and to the admin endpoints (workers, providers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hodei_cli.connection import cli_settings
from hodei_cli.embedded import AUTH_DIR, Auth
from hodei_common.contracts.namespaces import check_namespace
from hodei_common.errors import ConfigError, ValidationError
from hodei_common.natsauth import NKeyError, Trust, permissions, write_secret

app = typer.Typer(help="Make credentials for the platform's users.", no_args_is_help=True)


def _auth_dir(directory: Path | None) -> Path:
    return directory if directory is not None else cli_settings().home / AUTH_DIR


@app.command("init")
def init(
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="where to keep them (default: $HODEI_HOME/auth, as hodei dev up does)")
    ] = None,
    jwt_dir: Annotated[Path | None, typer.Option(
        "--jwt-dir", help="where nats-server keeps the account JWTs pushed to it (revoked "
        "users); default: DIR/nats-jwt")] = None,
) -> None:
    """Make the platform's NATS trust for a deployment, once: the operator, account and
    signing keys (DIR/keys), nats-server's configuration trusting them (DIR/nats-auth.conf,
    to include in the server's), and each service's and the CLI's creds files (DIR/creds).
    Run again, it keeps the keys and writes the rest anew."""
    root = _auth_dir(directory)
    auth = Auth.prepare(root)
    store = (jwt_dir or root / "nats-jwt").absolute()
    write_secret(root / "nats-auth.conf", auth.trust.server_config(store))
    given = ", ".join(str(path) for path in auth.provisioner_settings().values())
    typer.echo(f"keys in {auth.keys_dir} (for the provisioner: {given}; the last two to "
               f"revoke ended agents)")
    typer.echo(f"nats-server configuration in {root / 'nats-auth.conf'}")
    typer.echo(f"services' and CLI's credentials in {auth.creds_dir}")


@app.command("create-user")
def create_user(
    name: Annotated[str, typer.Argument(help="the user's name (a DNS label)")],
    namespace: Annotated[str, typer.Option("--namespace", help="the namespace it acts in")],
    admin: Annotated[bool, typer.Option(
        "--admin", help="may also act in every namespace and change providers")] = False,
    out: Annotated[Path | None, typer.Option(
        "--output", help="the creds file to write (default: ./NAME.creds)")] = None,
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="the platform's trust, as hodei auth init made it (default: "
        "$HODEI_HOME/auth)")] = None,
) -> None:
    """Write a creds file for NAME in NAMESPACE; use it with --creds FILE or HODEI_CREDS."""
    check_namespace(name, "user name")
    check_namespace(namespace)
    path = out if out is not None else Path(f"{name}.creds")
    if path.exists():
        raise ValidationError(f"{path} exists; remove it or choose another --output")
    directory = _auth_dir(directory) / "keys"
    try:
        trust = Trust.load(directory)
    except (OSError, NKeyError) as e:
        raise ConfigError(f"cannot read the platform's keys in {directory}: {e}") from None
    user = trust.issuer.new_user(permissions.user(name, namespace, admin=admin))
    user.write(path)
    kind = "admin" if admin else "user"
    typer.echo(f"wrote {path}: {kind} {name} of namespace {namespace}")

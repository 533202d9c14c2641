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
from hodei_cli.embedded import AUTH_DIR
from hodei_common.contracts.namespaces import check_namespace
from hodei_common.errors import ConfigError, ValidationError
from hodei_common.natsauth import NKeyError, Trust, permissions

app = typer.Typer(help="Make credentials for the platform's users.", no_args_is_help=True)


def _keys_dir(keys: Path | None) -> Path:
    return keys if keys is not None else cli_settings().home / AUTH_DIR / "keys"


@app.command("create-user")
def create_user(
    name: Annotated[str, typer.Argument(help="the user's name (a DNS label)")],
    namespace: Annotated[str, typer.Option("--namespace", help="the namespace it acts in")],
    admin: Annotated[bool, typer.Option(
        "--admin", help="may also act in every namespace and change providers")] = False,
    out: Annotated[Path | None, typer.Option(
        "--output", help="the creds file to write (default: ./NAME.creds)")] = None,
    keys: Annotated[Path | None, typer.Option(
        "--keys", help="the platform's keys (default: $HODEI_HOME/auth/keys)")] = None,
) -> None:
    """Write a creds file for NAME in NAMESPACE; use it with --creds FILE or HODEI_CREDS."""
    check_namespace(name, "user name")
    check_namespace(namespace)
    path = out if out is not None else Path(f"{name}.creds")
    if path.exists():
        raise ValidationError(f"{path} exists; remove it or choose another --output")
    directory = _keys_dir(keys)
    try:
        trust = Trust.load(directory)
    except (OSError, NKeyError) as e:
        raise ConfigError(f"cannot read the platform's keys in {directory}: {e}") from None
    user = trust.issuer.new_user(permissions.user(name, namespace, admin=admin))
    user.write(path)
    kind = "admin" if admin else "user"
    typer.echo(f"wrote {path}: {kind} {name} of namespace {namespace}")

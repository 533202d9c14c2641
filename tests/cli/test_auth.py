"""`hodei auth init`: the NATS trust of a deployment, made once and kept."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from hodei_common.natsauth import Trust, jwt
from hodei_common.natsauth.permissions import CLI_IDENTITY, Role
from tests.cli.conftest import run_cli


async def test_init_makes_the_trust_once_and_every_services_credentials(
    tmp_path: Path,
) -> None:
    auth = tmp_path / "auth"
    first = await run_cli({"PATH": "/usr/bin:/bin"}, "auth", "init", "--dir", str(auth))
    assert first.code == 0, first.stderr
    trust = Trust.load(auth / "keys")
    names = {p.name for p in (auth / "creds").iterdir()}
    assert names == {f"hodei-{role.value}.creds" for role in Role if role is not Role.CLI} | {
        f"{CLI_IDENTITY}.creds"}
    for path in [*(auth / "keys").iterdir(), *(auth / "creds").iterdir(),
                 auth / "nats-auth.conf"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    api = jwt.decode(jwt.creds_user_jwt((auth / "creds" / "hodei-api.creds").read_text()))
    assert api["iss"] == trust.account.public_key
    # The server's configuration trusts this operator and preloads the platform's account.
    config = (auth / "nats-auth.conf").read_text()
    operator = json.loads(config.splitlines()[0].removeprefix("operator: "))
    assert jwt.decode(operator)["sub"] == trust.operator.public_key
    assert f"{trust.account.public_key}: " in config
    again = await run_cli({"PATH": "/usr/bin:/bin"}, "auth", "init", "--dir", str(auth))
    assert again.code == 0, again.stderr
    assert Trust.load(auth / "keys") == trust  # the same platform: its keys are kept

"""Revoking a NATS user at run time: the platform account's JWT pushed anew with the user in
its revocations closes the user's connection and refuses it from then on, across restarts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from hodei_common.embedded import NatsServer
from hodei_common.natsauth import Trust, UserCredentials, jwt, permissions
from hodei_common.natsauth.revoker import RevocationError, Revoker
from hodei_common.natsauth.server import PlatformAccount
from hodei_common.testing import assert_eventually

TIMEOUT_S = 5.0


async def _connect(url: str, user: UserCredentials, directory: Path, **options: object) -> NATS:
    nc = NATS()
    try:
        creds = user.write(directory / f"{public_key(user)}.creds")
        await nc.connect(url, user_credentials=str(creds),
                         inbox_prefix=user.inbox_prefix, connect_timeout=2,
                         reconnect_time_wait=0.2, **options)  # type: ignore[arg-type]
    except BaseException:
        await nc.close()
        raise
    return nc


def public_key(user: UserCredentials) -> str:
    """The user's public key: what a revocation names."""
    subject: str = jwt.decode(user.jwt)["sub"]
    return subject


async def _refused(url: str, user: UserCredentials, directory: Path) -> None:
    with pytest.raises(NatsError, match="Authorization Violation"):
        await _connect(url, user, directory, allow_reconnect=False, max_reconnect_attempts=0)


@pytest.fixture
async def revoker(nats_server: NatsServer, nats_trust: Trust, tmp_path: Path
                  ) -> AsyncIterator[Revoker]:
    """A revoker connected as the system account's revoker user, reconnecting forever."""
    user = nats_trust.system_user(permissions.revoker())
    nc = await _connect(nats_server.url, user, tmp_path, max_reconnect_attempts=-1)
    try:
        yield Revoker(nats_trust.platform_account, nc, timeout_s=TIMEOUT_S)
    finally:
        await nc.close()


@pytest.mark.nats
async def test_a_revoked_user_is_disconnected_and_refused_while_others_stay(
    nats_server: NatsServer, nats_trust: Trust, revoker: Revoker, tmp_path: Path
) -> None:
    victim = nats_trust.user(permissions.everything("victim"))
    other = nats_trust.user(permissions.everything("other"))
    victim_nc = await _connect(nats_server.url, victim, tmp_path, max_reconnect_attempts=-1)
    other_nc = await _connect(nats_server.url, other, tmp_path)
    try:
        assert await revoker.apply({public_key(victim): int(time.time())})
        await assert_eventually(lambda: not victim_nc.is_connected, within_s=TIMEOUT_S)
        await _refused(nats_server.url, victim, tmp_path)
        await other_nc.flush(timeout=2)
        assert other_nc.is_connected
        assert victim_nc.stats["reconnects"] == 0  # its client keeps trying, in vain
    finally:
        await victim_nc.close()
        await other_nc.close()


@pytest.mark.nats
async def test_the_same_list_is_pushed_once_and_again_after_a_reconnect(
    nats_server: NatsServer, revoker: Revoker, nats_trust: Trust
) -> None:
    revoked = {public_key(nats_trust.user(permissions.everything("gone"))): int(time.time())}
    assert await revoker.apply(revoked)
    assert not await revoker.apply(revoked)
    nats_server.kill()
    nats_server.start()
    await assert_eventually(lambda: revoker.nc.stats["reconnects"] == 1
                            and revoker.nc.is_connected, within_s=TIMEOUT_S)
    assert await revoker.apply(revoked)


@pytest.mark.nats
async def test_a_revocation_survives_a_nats_server_restart(
    nats_server: NatsServer, nats_trust: Trust, revoker: Revoker, tmp_path: Path
) -> None:
    victim = nats_trust.user(permissions.everything("victim"))
    other = nats_trust.user(permissions.everything("other"))
    await revoker.apply({public_key(victim): int(time.time())})
    nats_server.kill()
    nats_server.start()  # its configuration preloads the account without revocations
    await _refused(nats_server.url, victim, tmp_path)
    nc = await _connect(nats_server.url, other, tmp_path)
    try:
        await nc.jetstream().account_info()  # the account kept its JetStream too
    finally:
        await nc.close()


@pytest.mark.nats
async def test_a_revoker_given_another_operators_key_finds_out_before_it_pushes(
    nats_server: NatsServer, nats_trust: Trust, revoker: Revoker
) -> None:
    await revoker.check()
    stranger = Trust.create()
    wrong = Revoker(PlatformAccount(operator=stranger.operator,
                                    account=nats_trust.account.public_key,
                                    signing_keys=()), revoker.nc, timeout_s=TIMEOUT_S)
    with pytest.raises(RevocationError, match="not of"):
        await wrong.check()

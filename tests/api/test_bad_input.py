"""Bad input: one clear line, the right code, and not a single row written."""

from __future__ import annotations

import msgspec
import pytest
from asyncpg import Pool

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import MAX_REQUEST_BYTES, ErrorCode
from hodei_common.contracts.jobs import MAX_COMMAND_BYTES, MAX_ENV_ENTRIES
from hodei_common.errors import ApiError
from tests.api.helpers import jobs_subject, row_counts

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

INVALID = ErrorCode.INVALID_ARGUMENT


def body(**fields: object) -> bytes:
    return msgspec.json.encode({"command": "echo hi", **fields})


BAD_SUBMITS = [
    pytest.param(b"{not json", "malformed request: JSON is malformed", id="malformed-bytes"),
    pytest.param(b"\xff\xfe", "malformed request:", id="not-utf8"),
    pytest.param(b"[1, 2]", "Expected `object`, got `array`", id="not-an-object"),
    pytest.param(b"{}", "Object missing required field `command`", id="missing-command"),
    pytest.param(body(timeout_s="soon"), "Expected `float`, got `str` - at `$.timeout_s`",
                 id="wrong-type"),
    pytest.param(body(command=""), "command must not be empty", id="empty-command"),
    pytest.param(body(command=" \t\n "), "command must not be empty", id="blank-command"),
    pytest.param(body(command="x" * (MAX_COMMAND_BYTES + 1)), "command is larger than 64 KiB",
                 id="command-over-64k"),
    # 2-byte characters: under the limit in characters, over it in UTF-8 bytes.
    pytest.param(body(command="é" * (MAX_COMMAND_BYTES // 2 + 1)),
                 "command is larger than 64 KiB", id="command-over-64k-utf8"),
    pytest.param(body(command="echo \u0000"), "command must not contain NUL bytes",
                 id="nul-in-command"),
    pytest.param(body(args=["a\u0000"]), "args must not contain NUL bytes", id="nul-in-args"),
    pytest.param(body(env={"K": "v\u0000"}), "env value of K must not contain NUL bytes",
                 id="nul-in-env"),
    pytest.param(body(timeout_s=-5), "timeout_s must be a positive number of seconds",
                 id="negative-timeout"),
    pytest.param(body(timeout_s=0), "timeout_s must be a positive number of seconds",
                 id="zero-timeout"),
    pytest.param(body(timeout_s=1e9), "timeout_s must be a positive number of seconds",
                 id="huge-timeout"),
    pytest.param(body(env={"X-Y": "1"}), "env key 'X-Y' is not a valid variable name",
                 id="env-key-dash"),
    pytest.param(body(env={"1A": "1"}), "env key '1A' is not a valid variable name",
                 id="env-key-digit"),
    pytest.param(body(env={"A\n": "1"}), "env key 'A\\n' is not a valid variable name",
                 id="env-key-newline"),
    pytest.param(body(env={"CAFÉ": "1"}), "env key 'CAFÉ' is not a valid variable name",
                 id="env-key-non-ascii"),
    pytest.param(body(env={f"K{i}": "v" for i in range(MAX_ENV_ENTRIES + 1)}),
                 f"at most {MAX_ENV_ENTRIES}", id="too-many-env"),
    pytest.param(body(provider="foo"), "unknown provider 'foo' (known: docker, kubernetes, local)",
                 id="unknown-provider"),
    pytest.param(body(max_attempts=0), "Expected `int` >= 1 - at `$.max_attempts`",
                 id="zero-attempts"),
    pytest.param(b" " * (MAX_REQUEST_BYTES + 1), "at most 256 KiB", id="over-size-limit"),
]


async def expect_error(client: ApiClient, subject: str, data: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await client.request(subject, data)
    error = caught.value
    assert "\n" not in error.message
    assert "Traceback" not in error.message
    return error


@pytest.mark.parametrize(("data", "message"), BAD_SUBMITS)
async def test_bad_submit_is_invalid_argument_and_writes_nothing(
    client: ApiClient, pool: Pool, data: bytes, message: str
) -> None:
    before = await row_counts(pool)

    error = await expect_error(client, jobs_subject(subjects.JOBS_SUBMIT), data)

    assert error.code == INVALID
    assert message in error.message
    assert await row_counts(pool) == before


async def test_submit_to_disabled_provider_is_failed_precondition(
    client: ApiClient, pool: Pool
) -> None:
    before = await row_counts(pool)

    error = await expect_error(client, jobs_subject(subjects.JOBS_SUBMIT), body(provider="docker"))

    assert (error.code, error.message) == (ErrorCode.FAILED_PRECONDITION,
                                           "provider 'docker' is disabled")
    assert await row_counts(pool) == before


async def test_submit_to_enabled_docker_provider_is_accepted(
    client: ApiClient, pool: Pool
) -> None:
    await pool.execute("UPDATE provider_configs SET enabled = true WHERE name = 'docker'")

    data = await client.request(jobs_subject(subjects.JOBS_SUBMIT), body(provider="docker"))

    assert msgspec.json.decode(data)["job"]["provider"] == "docker"


@pytest.mark.parametrize("subject", [jobs_subject(endpoint) for endpoint in (
    subjects.JOBS_GET, subjects.JOBS_CANCEL, subjects.JOBS_EVENTS)])
@pytest.mark.parametrize(("data", "message"), [
    (b'{"id": "not-a-uuid"}', "Invalid UUID - at `$.id`"),
    (b'{"id": 7}', "Expected `uuid`, got `int` - at `$.id`"),
    (b"", "Object missing required field `id`"),
])
async def test_bad_job_id_is_invalid_argument(
    client: ApiClient, pool: Pool, subject: str, data: bytes, message: str
) -> None:
    before = await row_counts(pool)

    error = await expect_error(client, subject, data)

    assert (error.code, error.message) == (INVALID, message)
    assert await row_counts(pool) == before


@pytest.mark.parametrize(("subject", "data", "message"), [
    (jobs_subject(subjects.JOBS_LIST), b'{"state": "DONE"}',
     "Invalid enum value 'DONE' - at `$.state`"),
    (jobs_subject(subjects.JOBS_LIST), b'{"limit": 0}', "Expected `int` >= 1 - at `$.limit`"),
    (subjects.ADMIN_WORKERS_LIST, b'{"state": 1}',
     "Expected `str | null`, got `int` - at `$.state`"),
])
async def test_bad_list_query_is_invalid_argument(
    client: ApiClient, subject: str, data: bytes, message: str
) -> None:
    error = await expect_error(client, subject, data)

    assert (error.code, error.message) == (INVALID, message)

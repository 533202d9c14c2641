"""Submits stored together: a job that fails its statement fails alone."""

from __future__ import annotations

import asyncio

import pytest
from asyncpg import Pool

from hodei_common.client import ApiClient
from hodei_common.contracts.api import ErrorCode, SubmitJobReply
from hodei_common.errors import ApiError
from tests.api.helpers import job

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def test_a_job_that_fails_the_shared_statement_fails_alone(
    client: ApiClient, pool: Pool,
) -> None:
    # Something only PostgreSQL refuses (input checks pass it): this command's row.
    await pool.execute("""
        CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.command = 'boom' THEN RAISE EXCEPTION 'refused'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_boom BEFORE INSERT ON jobs
            FOR EACH ROW EXECUTE FUNCTION refuse_boom();""")
    requests = [job(f"echo {i}") for i in range(12)]
    requests[6] = job("boom")

    replies = await asyncio.gather(*(client.submit(r) for r in requests),
                                   return_exceptions=True)

    failed = replies.pop(6)
    assert isinstance(failed, ApiError)
    assert failed.code == ErrorCode.INTERNAL
    assert all(isinstance(r, SubmitJobReply) and r.created for r in replies), replies
    stored = await pool.fetch("SELECT command FROM jobs")
    assert sorted(r["command"] for r in stored) == sorted(
        f"echo {i}" for i in range(12) if i != 6)
    assert await pool.fetchval("SELECT count(*) FROM domain_events") == 11

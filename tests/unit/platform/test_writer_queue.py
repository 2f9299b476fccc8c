"""SQLite writers of one process take turns in an asyncio queue instead of sleeping in SQLite's busy handler."""

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from enlace_platform.db import WriterQueue, make_engine


async def test_concurrent_writers_all_commit_one_at_a_time(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (writer INTEGER, step INTEGER)"))
    inside, overlaps = 0, 0

    async def writer(n: int) -> None:
        nonlocal inside, overlaps
        async with engine.begin() as conn:
            inside += 1
            overlaps += inside > 1
            await conn.execute(text("INSERT INTO t VALUES (:n, 1)"), {"n": n})
            await asyncio.sleep(0.005)  # other writers get the loop meanwhile, and must wait their turn
            await conn.execute(text("INSERT INTO t VALUES (:n, 2)"), {"n": n})
            inside -= 1

    await asyncio.gather(*(writer(n) for n in range(40)))
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT writer, step FROM t ORDER BY rowid"))).all()
    await engine.dispose()
    assert overlaps == 0
    assert len(rows) == 80
    # Each writer's two rows are adjacent: no transaction interleaved with another.
    assert all(rows[i][0] == rows[i + 1][0] for i in range(0, 80, 2))


async def test_a_second_write_transaction_inside_the_first_fails_like_a_busy_database_instead_of_hanging():
    queue = WriterQueue(timeout_s=0.2)
    first, second = {}, {}

    def enter(info):  # enter() runs inside SQLAlchemy's greenlet, as the begin hook does
        from sqlalchemy.util import greenlet_spawn
        return greenlet_spawn(queue.enter, info)

    await enter(first)
    with pytest.raises(OperationalError, match="database is locked"):
        await enter(second)
    queue.leave(first)
    await enter(second)  # the turn passed on
    queue.leave(second)
    queue.leave(second)  # leaving twice releases once
    await enter(first)
    queue.leave(first)

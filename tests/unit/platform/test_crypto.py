"""Crypto-shredding: a key per person, wrapped under a key-encryption key; shredding makes every copy noise."""

import base64
import os
import stat

import pytest
from cryptography.exceptions import InvalidTag
from sqlmodel import Field, SQLModel

from enlace_platform.crypto import (
    CorruptValue, Erased, Keyring, SubjectKey, load_key_encryption_key, purge_freed_pages, rewrap_subject_keys,
)
from enlace_platform.db import create_tables, make_engine, make_session_factory

NAME = "Itzel Ramírez-Cifrado"


class SealedThing(SQLModel, table=True):
    __tablename__ = "test_crypto_thing"
    id: str = Field(primary_key=True)
    name: str


@pytest.fixture
async def db(tmp_path):
    path = tmp_path / "c.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    await create_tables(engine, [SubjectKey.__table__, SealedThing.__table__])
    try:
        yield engine, make_session_factory(engine, f"crypto{id(engine)}"), path
    finally:
        await engine.dispose()


KEK = os.urandom(32)


async def test_sealed_fields_open_only_with_their_subject_and_field(db):
    _, sessions, _ = db
    ring = Keyring(KEK, namespace="svc")
    async with sessions() as session:
        alice, bob = await ring.sealer(session, "p-alice"), await ring.sealer(session, "p-bob")
        sealed = alice.seal("given_names", NAME)
        await session.commit()
    assert NAME not in sealed and sealed.startswith("enc1:")
    assert alice.seal("given_names", NAME) != sealed  # a fresh nonce every time
    assert alice.open("given_names", sealed) == NAME
    assert alice.seal("x", None) is None and alice.open("x", None) is None
    with pytest.raises(CorruptValue):
        alice.open("family_names", sealed)  # moved to another column
    with pytest.raises(CorruptValue):
        bob.open("given_names", sealed)  # moved to another person
    with pytest.raises(CorruptValue):
        alice.open("given_names", NAME)  # never sealed
    for damaged in (sealed[:len(sealed) // 2], sealed + "!", "enc1:"):  # truncated, not base64, empty
        with pytest.raises(CorruptValue):
            alice.open("given_names", damaged)


async def test_the_same_key_is_found_again_and_another_kek_cannot_unwrap_it(db):
    _, sessions, _ = db
    async with sessions() as session:
        sealed = (await Keyring(KEK, namespace="svc").sealer(session, "p1")).seal("f", NAME)
        await session.commit()
    async with sessions() as session:
        assert (await Keyring(KEK, namespace="svc").opener(session, "p1")).open("f", sealed) == NAME
        with pytest.raises(InvalidTag):
            await Keyring(os.urandom(32), namespace="svc").opener(session, "p1")
        with pytest.raises(InvalidTag):  # keys do not move between services
            await Keyring(KEK, namespace="other").opener(session, "p1")


async def test_rewrapping_moves_every_key_to_the_new_kek_and_a_rerun_changes_nothing(db):
    _, sessions, _ = db
    new_kek = os.urandom(32)
    async with sessions() as session:
        sealed = {p: (await Keyring(KEK, namespace="svc").sealer(session, p)).seal("f", f"{NAME} {p}")
                  for p in ("p1", "p2")}
        await session.commit()
    async with sessions() as session:
        assert await rewrap_subject_keys(session, "svc", KEK, new_kek) == 2
        await session.commit()
    async with sessions() as session:
        for person, value in sealed.items():  # the data keys, and so the sealed values, are unchanged
            assert (await Keyring(new_kek, namespace="svc").opener(session, person)).open("f", value) == f"{NAME} {person}"
            with pytest.raises(InvalidTag):
                await Keyring(KEK, namespace="svc").opener(session, person)
        assert await rewrap_subject_keys(session, "svc", KEK, new_kek) == 0  # a rerun finds them done
        with pytest.raises(CorruptValue, match="neither"):  # the wrong old key: refused, not half done
            await rewrap_subject_keys(session, "svc", os.urandom(32), os.urandom(32))


async def test_shredding_makes_the_data_unreadable_and_leaves_no_key_bytes_in_the_files(db):
    engine, sessions, path = db
    ring = Keyring(KEK, namespace="svc")
    async with sessions() as session:
        sealed = (await ring.sealer(session, "p1")).seal("name", NAME)
        session.add(SealedThing(id="t1", name=sealed))
        await session.commit()
    async with sessions() as session:
        wrapped = (await session.get(SubjectKey, "p1")).wrapped_key
        assert await ring.shred(session, "p1") is True
        await session.commit()
    assert await purge_freed_pages(engine) is True

    async with sessions() as session:
        with pytest.raises(Erased):
            await ring.opener(session, "p1")
        assert await ring.has_key(session, "p1") is False
        assert await ring.shred(session, "p1") is False  # erasing twice is harmless
        assert (await session.get(SealedThing, "t1")).name == sealed  # the row stays, as noise
    files = b"".join(p.read_bytes() for p in path.parent.glob(f"{path.name}*"))
    assert wrapped not in files, "secure_delete and the checkpoint leave no copy of the destroyed key"
    assert NAME.encode() not in files


def test_the_key_encryption_key_file_is_created_private_and_must_be_32_bytes(tmp_path):
    path = tmp_path / "keys" / "svc-data.key"
    key = load_key_encryption_key(None, str(path))
    assert len(key) == 32 and load_key_encryption_key(None, str(path)) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_encryption_key(base64.urlsafe_b64encode(key).decode(), "/nonexistent") == key
    with pytest.raises(ValueError, match="32 bytes"):
        load_key_encryption_key(base64.urlsafe_b64encode(b"short").decode(), "/nonexistent")


def _key_reads(engine) -> list[str]:
    """The SELECTs of subject_keys this engine runs from now on."""
    from sqlalchemy import event

    reads: list[str] = []

    def count(_conn, _cursor, statement, *_):
        if statement.lstrip().upper().startswith("SELECT") and "subject_keys" in statement:
            reads.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    return reads


async def test_a_key_is_read_once_per_transaction_and_never_kept_past_it(db):
    engine, sessions, _ = db
    ring = Keyring(KEK, namespace="svc")
    async with sessions() as session:
        sealed = (await ring.sealer(session, "p1", new=True)).seal("f", NAME)
        assert (await ring.opener(session, "p1")).open("f", sealed) == NAME  # created here: no lookup
        await session.commit()
    reads = _key_reads(engine)
    async with sessions() as session, sessions() as other_replica:
        assert (await ring.opener(session, "p1")).open("f", sealed) == NAME
        assert (await ring.sealer(session, "p1")).open("f", sealed) == NAME
        assert (await ring.openers(session, ["p1", "p-unknown"]))["p-unknown"] is None
        assert len(reads) == 2, "p1 once, then only the subject not yet known"
        await session.commit()

        assert await ring.shred(other_replica, "p1") is True  # erased elsewhere between two transactions
        await other_replica.commit()
        with pytest.raises(Erased):
            await ring.opener(session, "p1")  # the next transaction reads the key again, and finds it gone
        assert (await ring.openers(session, ["p1"])) == {"p1": None}


async def test_a_shred_drops_the_key_from_its_transaction_at_once(db):
    _, sessions, _ = db
    ring = Keyring(KEK, namespace="svc")
    async with sessions() as session:
        await ring.sealer(session, "p1")
        await session.commit()
    async with sessions() as session:
        await ring.opener(session, "p1")
        assert await ring.shred(session, "p1") is True
        with pytest.raises(Erased):
            await ring.opener(session, "p1")
        assert (await ring.openers(session, ["p1"])) == {"p1": None}
        await session.rollback()
        assert (await ring.opener(session, "p1")).subject_id == "p1", "rolled back: the key is there again"

"""The retention purge, and sealing rows written in clear before sealing existed.

The purge erases (reason RETENTION_EXPIRED) persons whose case has been inactive longer than the retention
period and whom no protection hold (active or pending) and no open referral still needs. Each person is
erased in a transaction of their own, claimed by a conditional update: two replicas purging at once erase
each person once.
"""

import logging
from datetime import UTC, date, datetime

from sqlalchemy import String, cast
from sqlmodel import col, select

from enlace_platform.crypto import PREFIX, Keyring, purge_freed_pages
from enlace_platform.runtime import KeyRotationStep, every
from intake.adapters.orm import (
    ConsentRow, PersonDocumentRow, PersonRow, PersonVersionRow, ScreeningRow, SearchTokenRow,
)
from intake.adapters.vault import ERASURE_TABLES, Document, PersonRecord, Vault, is_sealed
from intake.service_layer import services

log = logging.getLogger(__name__)

# The tables whose clear values the legacy sealing replaces.
LEGACY_CLEAR_TABLES = tuple(t.__tablename__ for t in (PersonRow, PersonDocumentRow, PersonVersionRow, ScreeningRow,
                                                       ConsentRow))


async def purge_expired(runtime, *, now: datetime | None = None) -> int:
    """One pass; returns how many persons were erased."""
    vault = Vault.of(runtime)
    older_than = (now or datetime.now(UTC)) - runtime.settings.retention_period
    erased, seen = 0, set()
    while True:
        async with runtime.sessions() as session:
            batch = [c for c in await services.expired_persons(session, older_than) if c not in seen]
        if not batch:
            break
        for case_id, person_id in batch:
            seen.add((case_id, person_id))
            async with runtime.sessions() as session:
                if await services.erase_expired(session, vault, case_id, person_id, older_than):
                    erased += 1
    if erased:
        await purge_freed_pages(runtime.engine, tables=ERASURE_TABLES)
        log.info("retention purge erased %d person(s)", erased)
    return erased


def search_index_rotation(service_name: str) -> KeyRotationStep:
    """The blind index follows the key-encryption key (its search key is derived from it): when that key
    changes (enlace-ops rotate-data-key), every person not erased is opened, with their data key that the
    step before re-wrapped, and indexed again under the new search key."""
    async def reindex(session, old_kek: bytes, new_kek: bytes) -> int:
        vault = Vault(Keyring(new_kek, namespace=service_name), new_kek)
        persons = (await session.exec(select(PersonRow).where(col(PersonRow.erased_at).is_(None)))).all()
        indexed = 0
        for person in persons:
            record = await services.open_person(session, vault, person)
            if record is not None:  # None: shredded a moment ago; its index rows went with the key
                await vault.index(session, person, record)
                indexed += 1
        return indexed

    return KeyRotationStep("search_index", (SearchTokenRow.__tablename__,), reindex)


def retention_loop(interval_s: float):
    return every(interval_s, purge_expired, name="intake-retention-purge")


# --- rows from before sealing ------------------------------------------------------------------

async def seal_legacy_rows(runtime) -> int:
    """Seal every personal value still in clear (rows written before migration 0003, which cannot reach the
    key-encryption key) and index the persons for search. Runs at start-up; finds nothing once done.
    Returns how many persons were sealed."""
    vault = Vault.of(runtime)
    async with runtime.sessions() as session:
        ids = list((await session.exec(select(PersonRow.id).where(
            col(PersonRow.erased_at).is_(None), col(PersonRow.given_names).not_like(f"{PREFIX}%")))).all())
    for person_id in ids:
        async with runtime.sessions() as session:
            await _seal_person_rows(session, vault, await session.get(PersonRow, person_id))
            await session.commit()
    async with runtime.sessions() as session:
        sealed_rows = await _seal_other_rows(session, vault)
        await session.commit()
    if ids or sealed_rows:
        # The clear values leave the write-ahead log (SQLite) or the dead tuples (PostgreSQL) too.
        await purge_freed_pages(runtime.engine, tables=LEGACY_CLEAR_TABLES)
        log.info("sealed %d person(s) and %d other row(s) written before sealing", len(ids), sealed_rows)
    return len(ids)


async def _seal_person_rows(session, vault: Vault, person: PersonRow) -> None:
    documents = list((await session.exec(select(PersonDocumentRow).where(PersonDocumentRow.person_id == person.id)
                                         .order_by(PersonDocumentRow.position))).all())
    record = PersonRecord(
        given_names=person.given_names, family_names=person.family_names, sex=person.sex,
        date_of_birth=date.fromisoformat(str(person.date_of_birth)[:10]) if person.date_of_birth else None,
        estimated_age=None if person.estimated_age in (None, "") else int(person.estimated_age),
        age_disputed=person.age_disputed, nationality=person.nationality,
        languages=list(person.languages or []),
        documents=[Document(type=d.type, number=d.number, issuing_country=d.issuing_country) for d in documents])
    sealed_documents = await vault.seal_person(session, person, record)
    for row, sealed in zip(documents, sealed_documents):  # in place: the ids stay
        row.type, row.number, row.issuing_country = sealed.type, sealed.number, sealed.issuing_country
        session.add(row)
    session.add(person)
    await vault.index(session, person, record)


def _in_clear(json_column):
    """A JSON column that does not hold a sealed string (a sealed value is stored as the JSON text "enc1:...")."""
    return cast(json_column, String).not_like(f'"{PREFIX}%')


async def _seal_other_rows(session, vault: Vault) -> int:
    count = 0
    for version in (await session.exec(select(PersonVersionRow).where(_in_clear(PersonVersionRow.snapshot)))).all():
        if isinstance(version.snapshot, dict):
            await vault.seal_snapshot(session, version, version.snapshot)
            session.add(version)
            count += 1
    for screening in (await session.exec(select(ScreeningRow).where(_in_clear(ScreeningRow.answers)))).all():
        if isinstance(screening.answers, dict):
            await vault.seal_screening(session, screening, answers=screening.answers, facts=screening.facts or {},
                                       needs=screening.needs or [])
            session.add(screening)
            count += 1
    for consent in (await session.exec(select(ConsentRow).where(
            col(ConsentRow.reason).is_not(None), col(ConsentRow.reason).not_like(f"{PREFIX}%")))).all():
        if not is_sealed(consent.reason):
            await vault.seal_consent_reason(session, consent, consent.reason)
            session.add(consent)
            count += 1
    return count


__all__ = ["purge_expired", "retention_loop", "seal_legacy_rows", "search_index_rotation"]

"""The free text of a referral's history, sealed with the person's key (crypto-shredding).

Reasons (reject, cancel, fail) and progress notes are written by caseworkers about the person, so they
are personal data: they are stored sealed with the person's data key (enlace_platform.crypto) and opened
only to render the history. When intake erases the person (person.erased.v1) the key is destroyed and the
sealed text is removed: the history then shows ``null`` with ``text_erased: true``, while every id,
code and status stays, so the referral's lifecycle goes on.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.crypto import CorruptValue, Erased, Keyring, purge_freed_pages
from referral.adapters.orm import HistoryRow, ReferralRow

log = logging.getLogger(__name__)

REASON_TEXT, NOTE = "referral_history.reason_text", "referral_history.note"  # bound into each sealed value


async def sealed_text(session: AsyncSession, keyring: Keyring | None, person_id: str, *,
                      reason_text: str | None = None, note: str | None = None) -> dict:
    """History columns for new free text, sealed with the person's key (created on first use)."""
    if reason_text is None and note is None:
        return {"text_sealed": True}
    if keyring is None:
        raise ValueError("free text about a person is never stored in clear: pass the keyring")
    sealer = await keyring.sealer(session, person_id)
    return {"reason_text": sealer.seal(REASON_TEXT, reason_text), "note": sealer.seal(NOTE, note),
            "text_sealed": True}


@dataclass(frozen=True)
class HistoryText:
    reason_text: str | None
    note: str | None
    text_erased: bool
    text_withheld: bool = False  # not for this reader (see the history route), though it exists


ERASED = HistoryText(None, None, True)


def _has_text(row: HistoryRow) -> bool:
    return row.reason_text is not None or row.note is not None


async def open_history_text(session: AsyncSession, keyring: Keyring, person_id: str,
                            rows: list[HistoryRow]) -> list[HistoryText]:
    """The readable free text of each history row of one person, in order."""
    opener = None
    if any(row.text_sealed and _has_text(row) for row in rows):
        try:
            opener = await keyring.opener(session, person_id)
        except Erased:
            opener = None
    texts = []
    for row in rows:
        if row.text_erased:
            texts.append(ERASED)
        elif not row.text_sealed or not _has_text(row):  # not yet sealed by start-up, or no text at all
            texts.append(HistoryText(row.reason_text, row.note, False))
        elif opener is None:
            texts.append(ERASED)
        else:
            try:
                texts.append(HistoryText(opener.open(REASON_TEXT, row.reason_text), opener.open(NOTE, row.note), False))
            except CorruptValue:  # tampered, or sealed under a key that no longer exists: unreadable either way
                log.warning("history row %s of referral %s does not open", row.id, row.referral_id)
                texts.append(ERASED)
    return texts


async def erase_person_text(session: AsyncSession, keyring: Keyring, person_id: str) -> int:
    """Destroys the person's key and removes their sealed free text (in the caller's transaction); the rows
    keep their ids and codes and say ``text_erased``. Returns how many rows lost their text."""
    await keyring.shred(session, person_id)
    referrals = select(ReferralRow.id).where(ReferralRow.person_id == person_id)
    result = await session.exec(
        update(HistoryRow).where(col(HistoryRow.referral_id).in_(referrals),
                                 or_(col(HistoryRow.reason_text).is_not(None), col(HistoryRow.note).is_not(None)))
        .values(reason_text=None, note=None, text_erased=True, text_sealed=True))
    return result.rowcount


async def seal_legacy_text(runtime) -> None:
    """Start-up: seals the free text written before it was sealed (migration 0003 left it flagged), then
    purges the freed pages so the clear text survives in neither the database file nor its log."""
    async with runtime.sessions() as session:
        rows = (await session.exec(
            select(HistoryRow, ReferralRow.person_id).join(ReferralRow, ReferralRow.id == HistoryRow.referral_id)
            .where(HistoryRow.text_sealed == False))).all()  # noqa: E712 (SQL expression)
        if not rows:
            return
        by_person: dict[str, list[HistoryRow]] = defaultdict(list)
        for row, person_id in rows:
            by_person[person_id].append(row)
        for person_id, history in by_person.items():
            for row in history:
                sealed = await sealed_text(session, runtime.keyring, person_id, reason_text=row.reason_text,
                                           note=row.note)
                for key, value in sealed.items():
                    setattr(row, key, value)
        await session.commit()
    log.info("sealed the free text of %d history rows written before sealing", len(rows))
    await purge_freed_pages(runtime.engine, tables=(HistoryRow.__tablename__,))

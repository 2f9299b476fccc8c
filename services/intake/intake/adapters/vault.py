"""Sealing intake's personal fields with the person's key, and the blind index that keeps them searchable.

Every personal field is sealed with the person's AES-GCM data key (enlace_platform.crypto.Keyring), bound
to the person and the field name. Searching cannot read sealed values, so each person also has rows in
``intake_search_token``: HMAC-SHA256 of each normalised word of their names and of each whole document
number, under a search key derived (HKDF, info "intake-search") from the service's key-encryption key.
Erasure shreds the key and deletes those rows: nothing of the person opens or matches afterwards.
"""

import hashlib
import hmac
import json
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import delete
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.crypto import PREFIX, Keyring, Sealer, SubjectKey, derive_key
from intake.adapters.orm import (
    ConsentRow, PersonDocumentRow, PersonRow, PersonVersionRow, ScreeningRow, SearchTokenRow,
)

SEARCH_KEY_PURPOSE = "intake-search"
# What an erasure deletes: the key and the blind-index rows (purge_freed_pages clears their freed space).
ERASURE_TABLES = (SubjectKey.__tablename__, SearchTokenRow.__tablename__)


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def search_words(text: str) -> list[str]:
    """Lower case without accents, split into words, so that 'perez' finds 'Pérez'."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).split()


def document_key(number: str) -> str:
    return number.strip().upper()


@dataclass
class Document:
    type: str
    number: str
    issuing_country: str | None = None


@dataclass
class PersonRecord:
    """A person's record, opened."""

    given_names: str
    family_names: str
    sex: str
    date_of_birth: date | None
    estimated_age: int | None
    age_disputed: bool
    nationality: str | None
    languages: list[str]
    documents: list[Document] = field(default_factory=list)


class Vault:
    def __init__(self, keyring: Keyring, key_encryption_key: bytes) -> None:
        self.keyring = keyring
        self._search_key = derive_key(key_encryption_key, SEARCH_KEY_PURPOSE)

    @classmethod
    def of(cls, runtime) -> "Vault":
        """The runtime's one vault (its keyring and key-encryption key)."""
        return runtime.shared(cls, lambda: cls(runtime.keyring, runtime.key_encryption_key))

    async def sealer(self, session: AsyncSession, person_id: str, *, new: bool = False) -> Sealer:
        """``new``: the person was created in this transaction (no key to look up yet)."""
        return await self.keyring.sealer(session, person_id, new=new)

    async def opener(self, session: AsyncSession, person_id: str) -> Sealer:
        """Raises Erased once the person's key is gone."""
        return await self.keyring.opener(session, person_id)

    async def openers(self, session: AsyncSession, person_ids: list[str]) -> dict[str, Sealer | None]:
        """Openers of several persons with one query; None for an erased person."""
        return await self.keyring.openers(session, person_ids)

    # --- the blind index ------------------------------------------------------------------------

    def token(self, kind: str, value: str) -> str:
        return hmac.new(self._search_key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()

    def name_tokens(self, text: str) -> list[str]:
        return sorted({self.token("name", w) for w in search_words(text)})

    def document_token(self, number: str) -> str:
        return self.token("document", document_key(number))

    async def index(self, session: AsyncSession, person: PersonRow, record: PersonRecord, *, new: bool = False) -> None:
        """Replace the person's search rows with those of this record (``new``: they have none yet)."""
        if not new:
            await self.unindex(session, person.id)
        tokens = set(self.name_tokens(f"{record.given_names} {record.family_names}"))
        tokens |= {self.document_token(d.number) for d in record.documents}
        session.add_all(SearchTokenRow(person_id=person.id, case_id=person.case_id, token=t) for t in sorted(tokens))

    async def unindex(self, session: AsyncSession, person_id: str) -> None:
        await session.exec(delete(SearchTokenRow).where(SearchTokenRow.person_id == person_id))

    # --- persons and their documents ------------------------------------------------------------

    async def seal_person(self, session: AsyncSession, person: PersonRow, record: PersonRecord, *,
                          new: bool = False) -> list[PersonDocumentRow]:
        """Write the record into the row, sealed; returns the new document rows (not yet added). ``new``: the
        person was created in this transaction, so their key is created without looking for one."""
        s = await self.sealer(session, person.id, new=new)
        person.given_names = s.seal("given_names", record.given_names)
        person.family_names = s.seal("family_names", record.family_names)
        person.sex = s.seal("sex", record.sex)
        dob, age = record.date_of_birth, record.estimated_age
        person.date_of_birth = s.seal("date_of_birth", dob.isoformat() if dob else None)
        person.estimated_age = s.seal("estimated_age", None if age is None else str(age))
        person.age_disputed = record.age_disputed
        person.nationality = s.seal("nationality", record.nationality)
        person.languages = s.seal("languages", json.dumps(record.languages))
        return [PersonDocumentRow(person_id=person.id, case_id=person.case_id, position=i,
                                  type=s.seal("document.type", d.type), number=s.seal("document.number", d.number),
                                  issuing_country=s.seal("document.issuing_country", d.issuing_country))
                for i, d in enumerate(record.documents)]

    async def open_person(self, session: AsyncSession, person: PersonRow,
                          documents: list[PersonDocumentRow]) -> PersonRecord:
        s = await self.opener(session, person.id)
        return open_person_with(s, person, documents)

    async def open_age(self, session: AsyncSession, person: PersonRow) -> tuple[date | None, int | None]:
        """(date_of_birth, estimated_age) alone; raises Erased once the person's key is gone."""
        return _age_of(await self.opener(session, person.id), person)

    # --- other sealed values --------------------------------------------------------------------

    async def seal_json(self, session: AsyncSession, person_id: str, name: str, value: Any) -> str:
        return (await self.sealer(session, person_id)).seal(name, json.dumps(value))

    async def open_json(self, session: AsyncSession, person_id: str, name: str, sealed: str) -> Any:
        return json.loads((await self.opener(session, person_id)).open(name, sealed))

    async def seal_screening(self, session: AsyncSession, row: ScreeningRow, *, answers: dict, facts: dict,
                             needs: list[dict]) -> None:
        s = await self.sealer(session, row.person_id)
        row.answers = s.seal("screening.answers", json.dumps(answers))
        row.facts = s.seal("screening.facts", json.dumps(facts))
        row.needs = s.seal("screening.needs", json.dumps(needs))
        row.need_codes = [{"code": n["code"], "urgency": n["urgency"]} for n in needs]

    async def seal_consent_reason(self, session: AsyncSession, row: ConsentRow, reason: str | None) -> None:
        row.reason = (await self.sealer(session, row.person_id)).seal("consent.reason", reason)

    async def open_consent_reason(self, session: AsyncSession, row: ConsentRow) -> str | None:
        if row.reason is None:
            return None
        return (await self.opener(session, row.person_id)).open("consent.reason", row.reason)

    async def seal_snapshot(self, session: AsyncSession, row: PersonVersionRow, snapshot: dict) -> None:
        row.snapshot = (await self.sealer(session, row.person_id)).seal("snapshot", json.dumps(snapshot))

    async def open_snapshot(self, session: AsyncSession, row: PersonVersionRow) -> dict:
        return json.loads((await self.opener(session, row.person_id)).open("snapshot", row.snapshot))


def _age_of(s: Sealer, person: PersonRow) -> tuple[date | None, int | None]:
    dob = s.open("date_of_birth", person.date_of_birth)
    age = s.open("estimated_age", person.estimated_age)
    return date.fromisoformat(dob) if dob else None, None if age is None else int(age)


def open_person_with(s: Sealer, person: PersonRow, documents: list[PersonDocumentRow]) -> PersonRecord:
    date_of_birth, estimated_age = _age_of(s, person)
    return PersonRecord(
        given_names=s.open("given_names", person.given_names), family_names=s.open("family_names", person.family_names),
        sex=s.open("sex", person.sex), date_of_birth=date_of_birth,
        estimated_age=estimated_age, age_disputed=person.age_disputed,
        nationality=s.open("nationality", person.nationality),
        languages=json.loads(s.open("languages", person.languages)),
        documents=[Document(type=s.open("document.type", d.type), number=s.open("document.number", d.number),
                            issuing_country=s.open("document.issuing_country", d.issuing_country)) for d in documents])


__all__ = ["Document", "PersonRecord", "Vault", "is_sealed", "search_words"]

"""Crypto-shredding: personal fields sealed with a key per person, so erasing a person is deleting one key.

Each person (the *subject*) gets a random 256-bit AES-GCM data key the first time something of
theirs is sealed. The data key is stored wrapped (AES-GCM) under the service's key-encryption key,
which lives outside the database (``data_key`` setting, or a key file), so a database dump alone
decrypts nothing. :meth:`Keyring.shred` deletes the wrapped key: from then on every sealed value
of that person is noise, in the live database, in its backups and in any copy of a row.

SQLite engines run with ``secure_delete``, so the deleted key's bytes are overwritten rather than
left in a free page, and :func:`purge_freed_pages` checkpoints the write-ahead log afterwards.

Each sealed value is bound to its subject and field (AES-GCM associated data): a value copied into
another person's row or another column does not open.
"""

import asyncio
import base64
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)

PREFIX = "enc1:"
_NONCE_BYTES = 12


class SubjectKey(SQLModel, table=True):
    __tablename__ = "subject_keys"

    subject_id: str = Field(primary_key=True, description="The person whose data this key seals")
    wrapped_key: bytes = Field(description="Nonce + AES-GCM(key-encryption key, data key)")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Erased(Exception):
    """The subject's key was destroyed: their data no longer exists in readable form."""

    def __init__(self, subject_id: str) -> None:
        super().__init__(f"subject {subject_id} was erased")
        self.subject_id = subject_id


class CorruptValue(Exception):
    """A sealed value that does not open with its subject's key (tampered, or moved from elsewhere)."""


def load_key_encryption_key(inline: str | None, path: str) -> bytes:
    """The key-encryption key: base64 of 32 bytes, from the setting or else the key file (created on
    first use, mode 0600, for local runs; production passes it from its secret store)."""
    if inline:
        key = base64.urlsafe_b64decode(inline)
    else:
        file = Path(path)
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode())
        key = base64.urlsafe_b64decode(file.read_text().strip())
    if len(key) != 32:
        raise ValueError("the data key-encryption key must be 32 bytes, base64-encoded")
    return key


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)


def _wrap_aad(namespace: bytes, subject_id: str) -> bytes:
    return namespace + b"|" + subject_id.encode()


async def rewrap_subject_keys(session: AsyncSession, namespace: str, old_kek: bytes, new_kek: bytes) -> int:
    """Re-wrap every subject's data key under a new key-encryption key (in the caller's transaction); the
    data keys, and so every sealed value, stay as they are. A key already under the new one is left, so a
    rerun after an interruption finishes the job. Returns how many were re-wrapped; CorruptValue if a key
    opens under neither (the wrong old key, most likely: then nothing must be written)."""
    rewrapped = 0
    for row in (await session.exec(select(SubjectKey))).all():
        aad = _wrap_aad(namespace.encode(), row.subject_id)
        try:
            data_key = _open(old_kek, row.wrapped_key, aad)
        except InvalidTag:
            try:
                _open(new_kek, row.wrapped_key, aad)
            except InvalidTag as exc:
                raise CorruptValue(f"the key of subject {row.subject_id} opens under neither key-encryption key") \
                    from exc
            continue
        row.wrapped_key = _seal(new_kek, data_key, aad)
        session.add(row)
        rewrapped += 1
    return rewrapped


# Session info: (the transaction, {keyring: {subject: data key}}), see Keyring.
_TRANSACTION_KEYS = "enlace_crypto_transaction_keys"


class Keyring:
    """Per-subject data keys in the service's own database, wrapped under its key-encryption key.

    A key read or created in a transaction is kept for the rest of that transaction only (in the
    session, tied to the transaction object), so sealing several fields of one person reads and unwraps
    their key once. Nothing outlives the transaction: the next one reads the key again, and finds it
    gone once the person is erased, whichever replica shredded it. A shred drops it at once."""

    def __init__(self, key_encryption_key: bytes, *, namespace: str) -> None:
        self._kek = key_encryption_key
        self._namespace = namespace.encode()  # the service: keys do not move between services

    def _transaction_keys(self, session: AsyncSession) -> dict[str, bytes]:
        """The data keys this keyring has read or created in the session's current transaction."""
        sync_session = session.sync_session if isinstance(session, AsyncSession) else session
        transaction = sync_session.get_transaction()
        owner, by_keyring = session.info.get(_TRANSACTION_KEYS, (None, None))
        if transaction is None:
            return {}  # nothing begun yet: nothing to keep
        if owner is not transaction:
            by_keyring = {}
            session.info[_TRANSACTION_KEYS] = (transaction, by_keyring)
        return by_keyring.setdefault(self, {})

    def _unwrap(self, row: SubjectKey) -> bytes:
        return _open(self._kek, row.wrapped_key, _wrap_aad(self._namespace, row.subject_id))

    def _new_key(self, session: AsyncSession, subject_id: str) -> bytes:
        data_key = AESGCM.generate_key(bit_length=256)
        session.add(SubjectKey(subject_id=subject_id,
                               wrapped_key=_seal(self._kek, data_key, _wrap_aad(self._namespace, subject_id))))
        self._transaction_keys(session)[subject_id] = data_key
        return data_key

    async def _data_key(self, session: AsyncSession, subject_id: str, *, create: bool) -> bytes | None:
        key = self._transaction_keys(session).get(subject_id)
        if key is not None:
            return key
        row = await session.get(SubjectKey, subject_id)
        if row is None:
            return self._new_key(session, subject_id) if create else None
        self._transaction_keys(session)[subject_id] = key = self._unwrap(row)
        return key

    async def sealer(self, session: AsyncSession, subject_id: str, *, new: bool = False) -> "Sealer":
        """Seal and open this subject's fields; creates their key on first use (in the caller's transaction).
        ``new``: the subject was created in this transaction, so it has no key yet and none is looked up."""
        if new:
            return Sealer(subject_id, self._new_key(session, subject_id))
        return Sealer(subject_id, await self._data_key(session, subject_id, create=True))

    async def opener(self, session: AsyncSession, subject_id: str) -> "Sealer":
        """Open this subject's fields; raises :class:`Erased` once their key is gone."""
        key = await self._data_key(session, subject_id, create=False)
        if key is None:
            raise Erased(subject_id)
        return Sealer(subject_id, key)

    async def openers(self, session: AsyncSession, subject_ids: list[str]) -> dict[str, "Sealer | None"]:
        """Openers of several subjects with one query; None for a subject whose key is gone (erased)."""
        wanted = [s for s in dict.fromkeys(subject_ids) if s not in self._transaction_keys(session)]
        if wanted:
            rows = (await session.exec(select(SubjectKey).where(col(SubjectKey.subject_id).in_(wanted)))).all()
            self._transaction_keys(session).update((row.subject_id, self._unwrap(row)) for row in rows)
        known = self._transaction_keys(session)
        return {s: Sealer(s, known[s]) if s in known else None for s in subject_ids}

    async def has_key(self, session: AsyncSession, subject_id: str) -> bool:
        return await session.get(SubjectKey, subject_id) is not None

    async def shred(self, session: AsyncSession, subject_id: str) -> bool:
        """Destroy the subject's key (in the caller's transaction); True if there was one."""
        self._transaction_keys(session).pop(subject_id, None)
        result = await session.exec(delete(SubjectKey).where(SubjectKey.subject_id == subject_id))
        return result.rowcount > 0


class Sealer:
    def __init__(self, subject_id: str, key: bytes) -> None:
        self.subject_id = subject_id
        self._key = key

    def _aad(self, field: str) -> bytes:
        return f"{self.subject_id}|{field}".encode()

    def seal(self, field: str, value: str | None) -> str | None:
        if value is None:
            return None
        return PREFIX + base64.b64encode(_seal(self._key, value.encode(), self._aad(field))).decode()

    def open(self, field: str, sealed: str | None) -> str | None:
        if sealed is None:
            return None
        if not sealed.startswith(PREFIX):
            raise CorruptValue(f"{field} of {self.subject_id} is not sealed")
        try:
            return _open(self._key, base64.b64decode(sealed[len(PREFIX):], validate=True), self._aad(field)).decode()
        except (InvalidTag, ValueError) as exc:  # ValueError: truncated, or not base64
            raise CorruptValue(f"{field} of {self.subject_id} does not open with its key") from exc


def derive_key(key_encryption_key: bytes, purpose: str) -> bytes:
    """A 256-bit key for one purpose (HKDF-SHA256, the purpose as its info), so the key-encryption key itself
    only ever wraps data keys. Each purpose of a service must have its own name."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(key_encryption_key)


class ServiceSecrets:
    """Secrets a service holds for others (not a person's data: no key per subject, nothing to shred), sealed
    under a key derived for one ``purpose`` (HKDF-SHA256, the purpose as its info) from the service's
    key-encryption key, so that key itself only ever wraps data keys. The purpose must differ from every
    other derivation of the service (intake derives "intake-search"). Each value is bound to its owner
    (e.g. the row's id) and field, as :class:`Sealer` binds a subject's."""

    def __init__(self, key_encryption_key: bytes, purpose: str) -> None:
        self._key = derive_key(key_encryption_key, purpose)

    def sealer(self, owner_id: str) -> Sealer:
        return Sealer(owner_id, self._key)


async def purge_freed_pages(engine: AsyncEngine, attempts: int = 5,
                            tables: tuple[str, ...] = (SubjectKey.__tablename__,)) -> bool:
    """After a shred, make the destroyed key unrecoverable from the database files. True once done.

    SQLite: copy the write-ahead log into the (secure-deleting) database file and truncate it, so the
    key survives in neither. The checkpoint waits (busy timeout) for readers of older snapshots; if one
    outlasts it, it is tried again, and then left to SQLite's next automatic checkpoint, with a warning.

    PostgreSQL: the deleted row stays in the table as a dead tuple until vacuumed; ``VACUUM`` these
    tables (outside a transaction) removes it at once instead of whenever autovacuum comes. A dead
    tuple an older snapshot can still see is kept until that snapshot ends (autovacuum gets it then)."""
    if engine.dialect.name == "postgresql":
        await _vacuum(engine, tables)
        return True
    if engine.dialect.name != "sqlite":
        return True
    for attempt in range(attempts):
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()  # outside any transaction: a checkpoint cannot run inside one
            cursor = await raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy, _, _ = await cursor.fetchone()
        if not busy:
            return True
        await asyncio.sleep(0.2 * (attempt + 1))
    log.warning("the write-ahead log could not be checkpointed after an erasure; SQLite's next checkpoint will")
    return False


async def _vacuum(engine: AsyncEngine, tables: tuple[str, ...]) -> None:
    async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        for table in tables:
            if (await conn.execute(text("SELECT to_regclass(:name)"), {"name": table})).scalar() is not None:
                await conn.execute(text(f'VACUUM "{table}"'))

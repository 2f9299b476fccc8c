"""Webhook signing secrets, sealed at rest.

Whoever holds a subscription's secret can sign webhooks its agency trusts (a forged
``referral.cancelled``, say), so ``secret`` and ``previous_secret`` are stored sealed: AES-256-GCM under a
key derived (HKDF, purpose "notification-webhook-signing-secrets") from the service's key-encryption key,
which lives outside the database (enlace_platform.crypto.ServiceSecrets). Each sealed value is bound to
its subscription id and column, so a value copied into another row, or from ``previous_secret`` into
``secret``, does not open. The clear secret exists only in memory: in the response that shows it once and
while a delivery is signed.
"""

import logging
from datetime import datetime

from sqlalchemy import and_, or_
from sqlmodel import col, select, update

from enlace_platform.crypto import PREFIX, CorruptValue, ServiceSecrets, purge_freed_pages
from enlace_platform.runtime import KeyRotationStep
from enlace_platform.timeutil import as_utc
from notification.adapters.orm import SubscriptionRow
from notification.domain.webhooks import is_signing_secret, signing_secrets

log = logging.getLogger(__name__)

PURPOSE = "notification-webhook-signing-secrets"
SECRET, PREVIOUS_SECRET = "secret", "previous_secret"  # the columns, bound into each sealed value


class SigningSecrets:
    def __init__(self, key_encryption_key: bytes) -> None:
        self._secrets = ServiceSecrets(key_encryption_key, PURPOSE)

    @classmethod
    def of(cls, runtime) -> "SigningSecrets":
        """The runtime's one instance (its key derived once)."""
        return runtime.shared(cls, lambda: cls(runtime.key_encryption_key))

    def seal(self, sub: SubscriptionRow, *, secret: str, previous: str | None) -> None:
        """Writes both secrets into the row, sealed (the row's id must be final)."""
        sub.secret = self.sealed(sub.id, SECRET, secret)
        sub.previous_secret = self.sealed(sub.id, PREVIOUS_SECRET, previous)

    def sealed(self, subscription_id: str, column: str, value: str | None) -> str | None:
        return self._secrets.sealer(subscription_id).seal(column, value)

    def reseal(self, sub: SubscriptionRow, under: "SigningSecrets") -> bool:
        """Move the row's secrets from this key to ``under``; False if they are under it already (a rerun).
        CorruptValue if they open under neither: the wrong old key, most likely."""
        columns = (SECRET, PREVIOUS_SECRET)
        try:
            clear = {c: self._secrets.sealer(sub.id).open(c, getattr(sub, c)) for c in columns}
        except CorruptValue:
            for c in columns:
                under._secrets.sealer(sub.id).open(c, getattr(sub, c))
            return False
        under.seal(sub, secret=clear[SECRET], previous=clear[PREVIOUS_SECRET])
        return True

    def current(self, sub: SubscriptionRow) -> str:
        """The current secret in clear; CorruptValue if it does not open with this service's key."""
        return self._open(sub, SECRET, sub.secret)

    def previous(self, sub: SubscriptionRow) -> str | None:
        """The previous secret in clear, if there is one (whether or not its overlap is over)."""
        return self._open(sub, PREVIOUS_SECRET, sub.previous_secret)

    def for_signing(self, sub: SubscriptionRow, now: datetime) -> list[str]:
        """The clear secrets a delivery is signed with now: the current one, and the previous one during its
        overlap (opened only then: an expired one is never needed). CorruptValue if one does not open."""
        until = as_utc(sub.previous_secret_expires_at) if sub.previous_secret_expires_at else None
        in_overlap = sub.previous_secret is not None and until is not None and now < until
        previous = self.previous(sub) if in_overlap else None
        return signing_secrets(self.current(sub), previous, until, now)

    def _open(self, sub: SubscriptionRow, column: str, sealed: str | None) -> str | None:
        value = self._secrets.sealer(sub.id).open(column, sealed)
        if value is not None and not is_signing_secret(value):
            raise CorruptValue(f"{column} of {sub.id} is not a signing secret")  # never the value itself
        return value


def _in_clear(column):
    return and_(col(column).is_not(None), col(column).not_like(f"{PREFIX}%"))


async def seal_legacy_secrets(runtime) -> int:
    """Start-up: seals the secrets written in clear before they were sealed, then purges the freed pages so
    the clear values survive in neither the database file nor its log. Finds nothing once done; returns how
    many subscriptions it sealed.

    Whatever a column holds in clear is sealed as it is, so nothing is lost; a value that is not a ``whsec_``
    secret (this service never wrote one) is logged, and its subscription's deliveries fail until the
    secret is rotated. Each column is replaced only if it still holds the value read (another replica may
    have rotated meanwhile)."""
    secrets = SigningSecrets.of(runtime)
    async with runtime.sessions() as session:
        rows = (await session.exec(select(SubscriptionRow).where(
            or_(_in_clear(SubscriptionRow.secret), _in_clear(SubscriptionRow.previous_secret))))).all()
        for sub in rows:
            for column in (SECRET, PREVIOUS_SECRET):
                value = getattr(sub, column)
                if value is None or value.startswith(PREFIX):
                    continue
                if not is_signing_secret(value):
                    log.error("subscription %s: %s was neither sealed nor a whsec_ signing secret; it is sealed as "
                              "it was, and its deliveries fail until the secret is rotated", sub.id, column)
                column_attr = getattr(SubscriptionRow, column)
                await session.exec(update(SubscriptionRow)
                                   .where(SubscriptionRow.id == sub.id, column_attr == value)
                                   .values({column: secrets.sealed(sub.id, column, value)}))
        await session.commit()
    if rows:
        await purge_freed_pages(runtime.engine, tables=(SubscriptionRow.__tablename__,))  # the clear rows too
        log.info("sealed the signing secrets of %d subscription(s) written before sealing", len(rows))
    return len(rows)


__all__ = ["PURPOSE", "SigningSecrets", "seal_legacy_secrets"]


async def _reseal_all(session, old_kek: bytes, new_kek: bytes) -> int:
    old, new = SigningSecrets(old_kek), SigningSecrets(new_kek)
    changed = 0
    for sub in (await session.exec(select(SubscriptionRow))).all():
        if old.reseal(sub, under=new):
            session.add(sub)
            changed += 1
    return changed


# The signing secrets follow the service's key-encryption key when it changes (enlace-ops rotate-data-key).
KEY_ROTATION = KeyRotationStep("signing_secrets", (SubscriptionRow.__tablename__,), _reseal_all)

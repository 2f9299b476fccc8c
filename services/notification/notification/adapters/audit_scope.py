"""Which of notification's objects an auditor follows in GET /audit (enlace_platform.audit.AuditScope).

Subscriptions and their deliveries are only ever shown to their own agency, but anyone may try their ids:
the owner's auditor sees such a probe. Neither table names a jurisdiction, so the coordinator's auditor
follows the objects of the agencies the audit log has seen acting from its jurisdiction (every owner
created its subscription through the API, so it is among them).

An enforcement agency's auditor sees its own staff's entries only (the information barrier): another agency's
probe of its subscription would tell it nothing it needs, and would name that agency.
"""

from sqlmodel import select

from enlace_platform.audit import AuditScope, Owner, hidden_from_enforcement
from notification.adapters.orm import DeliveryRow, SubscriptionRow


def _subscriptions(owner: Owner):
    return select(SubscriptionRow.id).where(owner.owns(SubscriptionRow.agency_id))


def _deliveries(owner: Owner):
    return select(DeliveryRow.id).where(owner.owns(DeliveryRow.agency_id))


# Every object type notification's audit rows name: the routes' path objects and what they note.
AUDIT_SCOPE: AuditScope = hidden_from_enforcement({"subscription": _subscriptions, "delivery": _deliveries})

"""Which of referral's objects an auditor follows in GET /audit (enlace_platform.audit.AuditScope).

- A referral belongs to its sender and to every agency it was ever addressed to: routing, a reassignment
  or an assignment from the coordinator's queue each name the addressee in the history, and an earlier
  addressee keeps the file it received, so it keeps seeing who touches the referral afterwards. An onward
  referral (after a rejection) is a new referral: the agency that rejected its predecessor does not follow it.
- A protection hold belongs to the sender on whose behalf it protects the person, and to every agency
  that holds a referral of the same person and need (the agencies GET /holds shows it to).
- A directory entry (agency, service) belongs to the agency it describes.
The coordinator's auditor follows every referral, hold and directory entry of its jurisdiction. Entries
deleted from the directory belong to no one any more: their rows stay visible to the actor's auditors.

This is the protection side of the information barrier: an enforcement agency's auditor (the migration
authority that sent a referral) follows none of these objects and sees its own staff's entries only, since
another agency's entry on its referral would name the receiver and tell which protection work was done.
"""

from sqlalchemy import tuple_
from sqlmodel import col, or_, select

from enlace_platform.audit import AuditScope, Owner, hidden_from_enforcement
from referral.adapters.orm import AgencyRow, HistoryRow, HoldRow, ReferralRow, ServiceRow


def _referrals(owner: Owner):
    if owner.agency_id is None:
        return select(ReferralRow.id).where(ReferralRow.jurisdiction == owner.jurisdiction)
    addressed_before = select(HistoryRow.referral_id).where(HistoryRow.to_agency_id == owner.agency_id)
    return select(ReferralRow.id).where(or_(ReferralRow.from_agency_id == owner.agency_id,
                                            ReferralRow.to_agency_id == owner.agency_id,
                                            col(ReferralRow.id).in_(addressed_before)))


def _holds(owner: Owner):
    if owner.agency_id is None:
        return select(HoldRow.id).where(HoldRow.jurisdiction == owner.jurisdiction)
    needs_held = select(ReferralRow.person_id, ReferralRow.need_code).where(col(ReferralRow.id).in_(_referrals(owner)))
    return select(HoldRow.id).where(or_(HoldRow.from_agency_id == owner.agency_id,
                                        HoldRow.to_agency_id == owner.agency_id,
                                        tuple_(HoldRow.person_id, HoldRow.need_code).in_(needs_held)))


def _agencies(owner: Owner):
    return select(AgencyRow.id).where(owner.owns(AgencyRow.id, AgencyRow.jurisdiction))


def _services(owner: Owner):
    return select(ServiceRow.id).join(AgencyRow, col(AgencyRow.id) == ServiceRow.agency_id) \
        .where(owner.owns(ServiceRow.agency_id, AgencyRow.jurisdiction))


# Every object type referral's audit rows name: the routes' path objects and what they note.
AUDIT_SCOPE: AuditScope = hidden_from_enforcement(
    {"referral": _referrals, "hold": _holds, "agency": _agencies, "service": _services})

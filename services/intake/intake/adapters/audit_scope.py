"""Which of intake's objects an auditor follows in GET /audit (enlace_platform.audit.AuditScope).

A case and everything in it belong to the agency that registered it: its auditor sees whoever touched
them, a referral's addressee reading a person or another jurisdiction's agency probing the case. The
coordinator's auditor follows the cases registered in its jurisdiction. Erased persons keep their row
(only their key is shredded), so their audit trail stays visible by id.

When the registering agency is an enforcement agency, its auditor still sees that others read its persons
(the controller's accountability), but not who: enlace_platform.audit withholds the actor's agency and user.
"""

from sqlmodel import col, select

from enlace_platform.audit import AuditScope, Owner
from intake.adapters.orm import CaseRow, ConsentRow, PersonRow


def _cases(owner: Owner):
    return select(CaseRow.id).where(owner.owns(CaseRow.agency_id, CaseRow.jurisdiction))


def _persons(owner: Owner):
    return select(PersonRow.id).where(col(PersonRow.case_id).in_(_cases(owner)))


def _consents(owner: Owner):
    return select(ConsentRow.id).where(col(ConsentRow.case_id).in_(_cases(owner)))


# Every object type intake's audit rows name: the routes' path objects and what they note.
AUDIT_SCOPE: AuditScope = {"case": _cases, "person": _persons, "consent": _consents}

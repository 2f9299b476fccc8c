"""What an e-mail about a referral says. Pure.

E-mail is read on phones, forwarded and kept in mailboxes the service does not control, so it says
even less than a webhook: no names, no person id, and no need code. A subject line such as
"SGBV_SURVIVOR referral" would disclose a sexual-violence case to anyone who sees the inbox. It
carries the event, the referral id, the urgency, the deadline and a link; the recipient opens the
referral under its own login.
"""

from dataclasses import dataclass
from typing import Any

from notification.domain.events import REFERRAL_ESCALATED, REFERRAL_OVERDUE, REFERRAL_REASSIGNED, \
    REFERRAL_REQUESTED

_SUBJECTS = {
    REFERRAL_REQUESTED: "New referral for your agency",
    REFERRAL_REASSIGNED: "New referral for your agency",  # handed over to it by the coordinator
    REFERRAL_OVERDUE: "Referral deadline missed",
    REFERRAL_ESCALATED: "Referral escalated to the coordinator",
}
_URGENCIES = {"immediate", "high", "standard"}


@dataclass(frozen=True)
class EmailContent:
    subject: str
    body: str


def email_content(event_type: str, data: dict[str, Any], link: str, *, enforcement: bool = False) -> EmailContent:
    """``enforcement``: to an enforcement agency (enlace_platform.firewall), which learns that the referral exists
    and where to read its status, and nothing of its urgency, deadline, reason or routing."""
    if enforcement:
        data = {"referral_id": data.get("referral_id")}
    urgency = data.get("urgency") if data.get("urgency") in _URGENCIES else None
    subject = f"[Enlace] {_SUBJECTS.get(event_type, 'Referral update')}"
    if urgency in ("immediate", "high"):
        subject += f" (urgency: {urgency})"
    lines = [
        _SUBJECTS.get(event_type, "Referral update") + ".",
        "",
        f"Event: {event_type}",
        f"Referral: {data.get('referral_id')}",
    ]
    if urgency:
        lines.append(f"Urgency: {urgency}")
    if data.get("due_at"):
        lines.append(f"Deadline: {data['due_at']}")
    if event_type in (REFERRAL_OVERDUE, REFERRAL_ESCALATED) and isinstance(data.get("reason_code"), str):
        lines.append(f"Reason: {data['reason_code']}")
    if event_type == REFERRAL_REQUESTED and not data.get("to_agency_id") and not enforcement:
        lines.append("It waits in the coordinator's queue: no receiving agency was found.")
    lines += ["", f"Open it with your agency's login: {link}", "",
              "This message carries no personal data by design; the details are in Enlace."]
    return EmailContent(subject=subject, body="\n".join(lines))

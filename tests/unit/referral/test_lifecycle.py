"""The referral state machine, exhaustively: every status × every action × every actor role.

The expected table is written out by hand (not derived from the code's rules), so a changed rule
shows up here as a failing row.
"""

import itertools

import pytest

from referral.domain.lifecycle import Action, Allowed, Conflict, Forbidden, Role, Status, allowed_actions, decide

OPEN_STATES = ["requested", "received", "accepted", "in-progress", "on-hold"]

# (status, action) -> status after it, for the role that may take the action.
EXPECTED: dict[tuple[str, str], str] = {
    ("requested", "receive"): "received",
    ("requested", "accept"): "accepted",
    ("received", "accept"): "accepted",
    ("requested", "reject"): "rejected",
    ("received", "reject"): "rejected",
    ("accepted", "start"): "in-progress",
    ("accepted", "hold"): "on-hold",
    ("in-progress", "hold"): "on-hold",
    ("on-hold", "resume"): "in-progress",
    ("accepted", "complete"): "completed",
    ("in-progress", "complete"): "completed",
    ("accepted", "fail"): "failed",
    ("in-progress", "fail"): "failed",
    ("on-hold", "fail"): "failed",
    **{(s, "cancel"): "cancelled" for s in OPEN_STATES},
    **{(s, "reassign"): "requested" for s in OPEN_STATES},
}

WHO = {
    "receive": {"receiver"}, "accept": {"receiver"}, "reject": {"receiver"}, "start": {"receiver"},
    "hold": {"receiver"}, "resume": {"receiver"}, "complete": {"receiver"}, "fail": {"receiver"},
    "cancel": {"sender", "coordinator"}, "reassign": {"coordinator"},
}
ACTORS = {"receiver": frozenset({Role.RECEIVER}), "sender": frozenset({Role.SENDER}),
          "coordinator": frozenset({Role.COORDINATOR}), "unrelated": frozenset()}

CASES = list(itertools.product([s.value for s in Status], [a.value for a in Action], ACTORS))


def test_the_table_covers_every_status_action_and_actor():
    assert len(CASES) == 9 * 10 * 4
    assert set(WHO) == {a.value for a in Action}


@pytest.mark.parametrize(("status", "action", "actor"), CASES, ids=["-".join(c) for c in CASES])
def test_transition(status, action, actor):
    verdict = decide(Status(status), Action(action), ACTORS[actor])
    if actor not in WHO[action]:
        assert isinstance(verdict, Forbidden), verdict
    elif (status, action) in EXPECTED:
        assert isinstance(verdict, Allowed), verdict
        assert verdict.target == EXPECTED[(status, action)]
        assert verdict.rule.needs_reason is (action in ("reject", "cancel", "fail"))
        assert verdict.rule.needs_outcome is (action == "complete")
    else:
        assert isinstance(verdict, Conflict), verdict
        assert verdict.current == status
        # The 409 names what the caller may do instead: exactly the table's rows for this status and role.
        assert {str(a) for a in verdict.allowed_actions} == {
            a for (s, a) in EXPECTED if s == status and actor in WHO[a]}


@pytest.mark.parametrize("status", ["rejected", "completed", "cancelled", "failed"])
@pytest.mark.parametrize("actor", list(ACTORS))
def test_terminal_states_allow_nothing(status, actor):
    assert allowed_actions(Status(status), ACTORS[actor]) == ()


@pytest.mark.parametrize("status", [s.value for s in Status])
@pytest.mark.parametrize("actor", ["receiver", "sender", "coordinator"])
def test_a_queued_referral_can_only_be_assigned_or_cancelled(status, actor):
    # In the coordinator's queue there is no receiver: nobody can receive or accept it.
    allowed = {str(a) for a in allowed_actions(Status(status), ACTORS[actor], has_receiver=False)}
    assert allowed <= {"reassign", "cancel"}
    expected = {a for (s, a) in EXPECTED if s == status and actor in WHO[a] and a in ("reassign", "cancel")}
    assert allowed == expected


def test_one_agency_with_two_roles_gets_the_union():
    both = frozenset({Role.RECEIVER, Role.SENDER})
    assert set(allowed_actions(Status.REQUESTED, both)) == {Action.RECEIVE, Action.ACCEPT, Action.REJECT,
                                                            Action.CANCEL}


def test_every_final_outcome_resolves_hold_bearing_needs_only():
    from referral.domain.codes import FINAL_OUTCOME_RESOLVES, FINAL_OUTCOMES, HOLD_BEARING_NEEDS

    assert set(FINAL_OUTCOME_RESOLVES) == FINAL_OUTCOMES
    assert all(needs and needs <= HOLD_BEARING_NEEDS for needs in FINAL_OUTCOME_RESOLVES.values())

"""bus.yaml and the ACLs derived from it: least privilege, checked as properties of the derivation."""

import copy

import pytest
import yaml

from enlace_platform.bus import ADMIN, SERVICES, declared, load_text, parse
from enlace_platform.topics import TOPIC_OWNERS, all_topics, topic_of

BUS = declared()


def _allowed(principal: str, kind: str, operation: str) -> set[str]:
    return {a.resource_name for a in BUS.acls()
            if a.principal == f"User:{principal}" and a.resource_type == kind and a.operation == operation}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_writes_only_its_own_topics_and_the_dead_letters_of_what_it_reads(service):
    owned = {t for t, owner in TOPIC_OWNERS.items() if owner == service}
    dead_letters = {f"{t}.dlq" for t in BUS.reads(service)}
    assert _allowed(service, "TOPIC", "WRITE") == owned | dead_letters


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_reads_only_what_its_consumer_groups_consume_with_its_own_groups(service):
    assert _allowed(service, "TOPIC", "READ") == set(BUS.reads(service))
    groups = _allowed(service, "GROUP", "READ")
    assert groups == set(BUS.consumers[service]) and all(g.startswith(f"{service}.") for g in groups)


def test_no_literal_topic_acl_names_a_topic_that_is_not_provisioned():
    provisioned = set(all_topics())
    named = {a.resource_name for a in BUS.acls() if a.resource_type == "TOPIC"}
    assert named <= provisioned


def test_the_enforcement_integrator_reads_only_the_firewalls_topic():
    assert _allowed("enlace-integrator-enforcement", "TOPIC", "READ") == {"referral.status"}
    assert _allowed("enlace-integrator-enforcement", "TOPIC", "WRITE") == set()


def test_no_principal_but_the_services_and_the_operator_writes_anything():
    writers = {a.principal for a in BUS.acls() if a.operation == "WRITE"}
    assert writers == {f"User:{s}" for s in SERVICES} | {"User:enlace-ops"}


def test_the_operator_writes_only_consumed_topics_to_redrive_and_never_the_firewalls_topic():
    consumed = {t.removesuffix(".dlq") for t in all_topics() if t.endswith(".dlq")}
    assert _allowed("enlace-ops", "TOPIC", "WRITE") == consumed
    assert _allowed("enlace-ops", "TOPIC", "READ") == consumed | {f"{t}.dlq" for t in consumed}
    assert "referral.status" not in _allowed("enlace-ops", "TOPIC", "READ")


def test_the_prefix_is_put_in_front_of_every_resource():
    prefixed = BUS.acls("t1-")
    assert len(prefixed) == len(BUS.acls())
    assert all(a.resource_name.startswith("t1-") for a in prefixed)


def test_nobody_is_granted_cluster_or_admin_operations():
    assert {a.operation for a in BUS.acls()} == {"READ", "WRITE", "DESCRIBE"}
    assert {a.resource_type for a in BUS.acls()} == {"TOPIC", "GROUP"}
    assert all(a.principal != f"User:{ADMIN}" for a in BUS.acls())  # a super user needs no ACL


def test_every_event_type_topic_is_declared():
    for event_type in ("case.screened.v1", "referral.accepted.v1", "protection_hold.placed.v1",
                       "referral.status_changed.v1", "agency.changed.v1"):
        assert topic_of(event_type) in BUS.topics


def test_topics_are_replicated_three_times_with_two_in_sync_and_dead_letters_never_compacted():
    for name in all_topics():
        spec = BUS.spec_of(name)
        assert (spec.replication_factor, spec.configs["min.insync.replicas"]) == (3, "2")
    assert BUS.spec_of("referral.agency").configs["cleanup.policy"] == "compact"
    assert "cleanup.policy" not in BUS.spec_of("referral.agency.dlq").configs


def _document():
    return yaml.safe_load(load_text())


@pytest.mark.parametrize("breaks, message", [
    (lambda d: d["consumers"]["intake"].update({"intake.x": ["referral.status"]}), "not a consumed topic"),
    (lambda d: d["consumers"]["intake"].update({"referral.y": ["intake.case"]}), "must start with"),
    (lambda d: d["topics"]["intake.case"].update({"owner": "somebody"}), "unknown owner"),
    (lambda d: d["principals"].update({"intake": {"role": "integrator", "reads": []}}), "reserved"),
    (lambda d: d["principals"]["enlace-integrator"].update({"reads": ["nope"]}), "unknown topic"),
])
def test_a_contradictory_bus_file_is_refused_at_load(breaks, message):
    document = copy.deepcopy(_document())
    breaks(document)
    with pytest.raises(ValueError, match=message):
        parse(document)

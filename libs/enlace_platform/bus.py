"""The bus as declared in bus.yaml: topics with their settings, and the least-privilege ACLs derived from who
owns and who consumes each topic. Pure data: provisioning is enlace_platform.topics, applying the ACLs is
enlace_platform.topics as well (``--acls``), and the Helm chart carries a rendering of the same."""

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

SERVICES = ("intake", "referral", "notification")
ADMIN = "enlace-admin"  # the brokers' super user: inter-broker traffic and the topics-and-ACLs job, nothing else
OPERATOR_ROLE, INTEGRATOR_ROLE = "operator", "integrator"


@dataclass(frozen=True)
class TopicSpec:
    name: str  # unprefixed
    owner: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]
    consumed: bool  # some Enlace service reads it, so it has a dead-letter topic
    description: str = ""


@dataclass(frozen=True, order=True)
class AclBinding:
    """One ALLOW entry, as the broker's standard authorizer holds it (principal ``User:<name>``)."""

    principal: str
    resource_type: str  # TOPIC | GROUP
    pattern_type: str  # LITERAL | PREFIXED
    resource_name: str
    operation: str  # READ | WRITE | DESCRIBE


@dataclass(frozen=True)
class Bus:
    topics: dict[str, TopicSpec]
    dead_letter_configs: dict[str, str]
    # service -> consumer group -> topics it reads
    consumers: dict[str, dict[str, list[str]]]
    principals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def catalog(self) -> list[str]:
        return list(self.topics)

    def dlq(self, topic: str) -> str:
        return f"{topic}.dlq"

    def all_topics(self, prefix: str = "") -> list[str]:
        names = [n for t in self.topics.values() for n in (t.name, *((self.dlq(t.name),) if t.consumed else ()))]
        return [f"{prefix}{n}" for n in names]

    def spec_of(self, name: str, prefix: str = "") -> TopicSpec:
        """The settings of a topic or dead-letter topic name, given with the prefix it was named with."""
        if not name.startswith(prefix) or name.removeprefix(prefix).removesuffix(".dlq") not in self.topics:
            raise KeyError(f"{name!r} is not a topic of bus.yaml under the prefix {prefix!r}")
        bare = name.removeprefix(prefix)
        if bare in self.topics:
            return self.topics[bare]
        base = self.topics[bare.removesuffix(".dlq")]
        configs = {k: v for k, v in base.configs.items() if k != "cleanup.policy"}  # dead letters are never compacted
        return TopicSpec(name=bare, owner=base.owner, partitions=base.partitions,
                         replication_factor=base.replication_factor,
                         configs={**configs, **self.dead_letter_configs}, consumed=False)

    def reads(self, service: str) -> list[str]:
        return sorted({t for topics in self.consumers.get(service, {}).values() for t in topics})

    def acls(self, prefix: str = "") -> list[AclBinding]:
        """Every ALLOW entry the deployment needs; everything else is refused by the authorizer."""
        out: set[AclBinding] = set()

        def allow(principal: str, kind: str, name: str, *ops: str, pattern: str = "LITERAL") -> None:
            out.update(AclBinding(f"User:{principal}", kind, pattern, f"{prefix}{name}", op) for op in ops)

        for service in SERVICES:
            for topic in (t.name for t in self.topics.values() if t.owner == service):
                allow(service, "TOPIC", topic, "WRITE", "DESCRIBE")
            for topic in self.reads(service):
                allow(service, "TOPIC", topic, "READ", "DESCRIBE")
                allow(service, "TOPIC", self.dlq(topic), "WRITE", "DESCRIBE")  # it dead-letters there
            for group in self.consumers.get(service, {}):
                allow(service, "GROUP", group, "READ", "DESCRIBE")
        consumed = [t.name for t in self.topics.values() if t.consumed]
        for name, principal in self.principals.items():
            if principal["role"] == OPERATOR_ROLE:
                for topic in consumed:  # reads dead letters and sends them back; reads and rewinds the groups
                    allow(name, "TOPIC", self.dlq(topic), "READ", "DESCRIBE")
                    allow(name, "TOPIC", topic, "READ", "WRITE", "DESCRIBE")  # READ: a rewind commits offsets
                for groups in self.consumers.values():
                    for group in groups:
                        allow(name, "GROUP", group, "READ", "DESCRIBE")
            elif principal["role"] == INTEGRATOR_ROLE:
                for topic in principal["reads"]:
                    allow(name, "TOPIC", topic, "READ", "DESCRIBE")
                allow(name, "GROUP", principal["group_prefix"], "READ", "DESCRIBE", pattern="PREFIXED")
        return sorted(out)

    def principal_names(self) -> list[str]:
        return [*SERVICES, *self.principals]


def parse(document: dict[str, Any]) -> Bus:
    defaults = document["defaults"]
    topics = {
        name: TopicSpec(
            name=name, owner=spec["owner"],
            partitions=int(spec.get("partitions", defaults["partitions"])),
            replication_factor=int(spec.get("replication_factor", defaults["replication_factor"])),
            configs={**defaults.get("configs", {}), **spec.get("configs", {})},
            consumed=bool(spec.get("consumed", True)), description=spec.get("description", ""))
        for name, spec in document["topics"].items()
    }
    bus = Bus(topics=topics, dead_letter_configs=dict(document.get("dead_letter", {}).get("configs", {})),
              consumers={s: {g: list(t) for g, t in groups.items()} for s, groups in document["consumers"].items()},
              principals=dict(document.get("principals", {})))
    _check(bus)
    return bus


def _check(bus: Bus) -> None:
    """A file that contradicts itself is refused at load, not found out by a refused produce."""
    for service, groups in bus.consumers.items():
        if service not in SERVICES:
            raise ValueError(f"bus.yaml: consumers of unknown service {service!r}")
        for group, topics in groups.items():
            if not group.startswith(f"{service}."):
                raise ValueError(f"bus.yaml: group {group!r} of {service} must start with '{service}.'")
            for topic in topics:
                if topic not in bus.topics or not bus.topics[topic].consumed:
                    raise ValueError(f"bus.yaml: {group} reads {topic!r}, which is not a consumed topic")
    for topic in bus.topics.values():
        if topic.owner not in SERVICES:
            raise ValueError(f"bus.yaml: topic {topic.name} has unknown owner {topic.owner!r}")
    for name, principal in bus.principals.items():
        if name in SERVICES or name == ADMIN:
            raise ValueError(f"bus.yaml: principal {name!r} is reserved")
        for topic in principal.get("reads", []):
            if topic not in bus.topics:
                raise ValueError(f"bus.yaml: {name} reads unknown topic {topic!r}")


def load_text() -> str:
    return resources.files("enlace_platform").joinpath("bus.yaml").read_text(encoding="utf-8")


@cache
def declared() -> Bus:
    """The bus of this release (bus.yaml shipped in the package)."""
    return parse(yaml.safe_load(load_text()))

"""Write the Helm chart's bus data (deploy/k8s/enlace/files/bus.json) from libs/enlace_platform/bus.yaml.

    python deploy/k8s/render_bus.py            # (re)write the file
    python deploy/k8s/render_bus.py --check    # exit 1 if the committed file differs from bus.py's derivation

The chart's KafkaTopic and KafkaUser templates read only this file: every topic and dead-letter topic with
its partitions, replicas and configs (``declared().all_topics()`` and ``spec_of``), and every principal's
ALLOW ACLs (``declared().acls()``) in Strimzi's shape. Names are unprefixed; the chart puts
``kafka.topicPrefix`` in front of every topic and group, as ``acls(prefix)`` does.
"""

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from enlace_platform.bus import Bus, declared

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "deploy" / "k8s" / "enlace" / "files" / "bus.json"

# The broker's names (AclBinding) -> Strimzi's KafkaUser spelling.
RESOURCE_TYPES = {"TOPIC": "topic", "GROUP": "group"}
PATTERN_TYPES = {"LITERAL": "literal", "PREFIXED": "prefix"}
OPERATIONS = {"READ": "Read", "WRITE": "Write", "DESCRIBE": "Describe"}


def resource_name(topic: str) -> str:
    """A KafkaTopic's metadata.name: Kubernetes allows no '_' (referral.protection_hold); spec.topicName
    carries the real name."""
    name = topic.replace("_", "-").lower()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
        raise ValueError(f"topic {topic!r} has no valid Kubernetes name")
    return name


def topics(bus: Bus) -> list[dict[str, Any]]:
    out = []
    for name in bus.all_topics():
        spec = bus.spec_of(name)
        out.append({"name": name, "resourceName": resource_name(name), "owner": spec.owner,
                    "partitions": spec.partitions, "replicas": spec.replication_factor,
                    "config": dict(sorted(spec.configs.items()))})
    if len({t["resourceName"] for t in out}) != len(out):
        raise ValueError("two topics map to the same KafkaTopic name")
    return out


def users(bus: Bus) -> list[dict[str, Any]]:
    """One entry per principal: its ACLs grouped per resource, operations sorted (one Strimzi rule each)."""
    by_principal: dict[str, dict[tuple[str, str, str], set[str]]] = defaultdict(lambda: defaultdict(set))
    for binding in bus.acls():
        principal = binding.principal.removeprefix("User:")
        resource = (RESOURCE_TYPES[binding.resource_type], binding.resource_name, PATTERN_TYPES[binding.pattern_type])
        by_principal[principal][resource].add(OPERATIONS[binding.operation])
    return [{"name": principal,
             "acls": [{"type": kind, "name": name, "patternType": pattern, "operations": sorted(ops)}
                      for (kind, name, pattern), ops in sorted(by_principal[principal].items())]}
            for principal in bus.principal_names()]


def render(bus: Bus | None = None) -> str:
    bus = bus or declared()
    document = {
        "generatedBy": "deploy/k8s/render_bus.py from libs/enlace_platform/bus.yaml: do not edit by hand",
        "topics": topics(bus),
        "users": users(bus),
    }
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the committed file differs from bus.py's derivation")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.relative_to(REPO)}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text(encoding="utf-8") != text:
            print(f"k8s: {args.out} differs from bus.yaml; run deploy/k8s/render_bus.py", file=sys.stderr)
            return 1
        print("k8s: the chart's bus data matches bus.yaml", file=sys.stderr)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"k8s: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

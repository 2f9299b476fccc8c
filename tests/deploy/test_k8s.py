"""The Kubernetes kit (deploy/k8s, issue 14 item 5), checked without a cluster.

The Helm chart is rendered with the pinned helm (deploy/k8s/helm.sh builds it once from the Go module proxy) and
deploy/k8s/values/example.yaml, then:

- every resource of a built-in kind validates against Kubernetes' own schemas (kubernetes-validate, strict: an
  unknown field is an error, as the API server's strict field validation has it) for KUBERNETES_VERSION, and its
  names and labels are valid Kubernetes names;
- every Strimzi resource validates against the openAPIV3Schema of Strimzi's CRD (vendored under
  deploy/k8s/schemas, made by Strimzi's own generator from Maven Central), strict in the same way;
- the KafkaTopics equal ``declared().all_topics(prefix)`` with ``spec_of``'s settings, and the KafkaUsers' ACLs
  equal ``declared().acls(prefix)``, exactly, with and without a topic prefix;
- the Deployments run what deploy/services.sh runs, on its ports, with probes on routes the services have,
  settings the code reads, Kafka credentials of the principal the ACLs name, and memory from the benchmark;
- the NetworkPolicies open only what the architecture needs.

Each check is a function returning the problems it found; the tests assert there are none, and the mutation tests
at the end show that each check finds a planted mistake in a copy.
"""

import base64
import copy
import functools
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from enlace_platform import migrations
from enlace_platform.agencies import seed_agencies
from enlace_platform.bus import SERVICES, AclBinding, declared

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
CHART = K8S / "enlace"
EXAMPLE_VALUES = K8S / "values" / "example.yaml"
DEMO_DIRECTORY = REPO / "deploy" / "demo" / "agencies.json"
STRIMZI_CRDS = K8S / "schemas" / "strimzi-1.2.0"
KUBERNETES_VERSION = "1.35.0"  # the oldest version the kit is checked against; Strimzi 1.2 needs 1.30+
RELEASE, NAMESPACE = "enlace", "enlace"
STRIMZI_GROUP = "kafka.strimzi.io"
STRIMZI_API = f"{STRIMZI_GROUP}/v1"
PREFIX = "staging."  # a topic prefix, rendered to show that the chart prefixes as acls(prefix) does

SETTINGS_CLASSES = {"intake": "intake.config:IntakeSettings", "referral": "referral.config:ReferralSettings",
                    "notification": "notification.config:NotificationSettings"}
OTEL_VARIABLE = re.compile(r"OTEL_[A-Z0-9_]+")  # read by the OpenTelemetry SDK and enlace_platform.telemetry

# Strimzi's ACL spelling -> the broker's (enlace_platform.bus.AclBinding).
RESOURCE_TYPES = {"topic": "TOPIC", "group": "GROUP"}
PATTERN_TYPES = {"literal": "LITERAL", "prefix": "PREFIXED"}


# --- rendering -------------------------------------------------------------------------------------------------

def _helm_binary() -> str:
    result = subprocess.run([str(K8S / "helm.sh")], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"deploy/k8s/helm.sh could not provide helm:\n{result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def helm() -> str:
    return _helm_binary()


def helm_template(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                           "--kube-version", KUBERNETES_VERSION, *args], capture_output=True, text=True, timeout=120)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = helm_template(helm, "-f", str(EXAMPLE_VALUES), "--set-file", f"directory.seed={DEMO_DIRECTORY}", *args)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _data_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


# The chart-made Secrets instead of existing ones, and a topic prefix.
CHART_MADE_SECRETS = [arg for service in SERVICES for arg in (
    "--set", f"database.{service}.existingSecret=",
    "--set", f"database.{service}.url=postgresql+asyncpg://{service}:pw@db.example.invalid:5432/{service}",
    "--set", f"dataKeys.{service}.existingSecret=", "--set", f"dataKeys.{service}.value={_data_key()}")]


@pytest.fixture(scope="module")
def rendered(helm) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def rendered_variant(helm) -> list[dict[str, Any]]:
    return render(helm, "--set", f"kafka.topicPrefix={PREFIX}", *CHART_MADE_SECRETS)


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def deployment_of(docs: list[dict], service: str) -> dict:
    [doc] = [d for d in of_kind(docs, "Deployment")
             if d["metadata"]["labels"].get("app.kubernetes.io/component") == service]
    return doc


def container_of(workload: dict) -> dict:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def rendered_topic_prefix(docs: list[dict]) -> str:
    return env_of(container_of(deployment_of(docs, "intake")))["ENLACE_KAFKA_TOPIC_PREFIX"]


# --- checks: schemas and names ---------------------------------------------------------------------------------

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # RFC 1035: Service names, container and port names
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def builtin_problems(docs: list[dict]) -> list[str]:
    problems = []
    for doc in docs:
        if doc["apiVersion"].startswith(STRIMZI_GROUP):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message}")
    return problems


def name_problems(docs: list[dict]) -> list[str]:
    problems = []
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        name = meta["name"]
        pattern, limit = (DNS_LABEL, 63) if kind == "Service" else (DNS_SUBDOMAIN, 253)
        if not pattern.fullmatch(name) or len(name) > limit:
            problems.append(f"{kind}/{name}: not a valid name")
        labels = {**meta.get("labels", {}), **doc.get("spec", {}).get("template", {}).get("metadata", {})
                  .get("labels", {})}
        for key, value in labels.items():
            if not LABEL_VALUE.fullmatch(str(value)) or len(str(value)) > 63:
                problems.append(f"{kind}/{name}: label {key}={value!r} is not a valid label value")
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            if not DNS_LABEL.fullmatch(container["name"]):
                problems.append(f"{kind}/{name}: container name {container['name']!r}")
            for port in container.get("ports", []):
                if "name" in port and (not DNS_LABEL.fullmatch(port["name"]) or len(port["name"]) > 15):
                    problems.append(f"{kind}/{name}: port name {port['name']!r}")
    return problems


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as JSON Schema that refuses unknown fields, as the API server's strict field
    validation does (kubectl's default), except where the CRD keeps unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) if k in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not") else v
           for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def strimzi_schemas() -> dict[str, dict]:
    """kind -> the strict JSON Schema of its v1 version, from the vendored CRDs."""
    schemas = {}
    for path in sorted(STRIMZI_CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[crd["spec"]["names"]["kind"]] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def strimzi_problems(docs: list[dict]) -> list[str]:
    schemas, problems = strimzi_schemas(), []
    for doc in docs:
        if not doc["apiVersion"].startswith(STRIMZI_GROUP):
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] != STRIMZI_API or doc["kind"] not in schemas:
            problems.append(f"{where}: {doc['apiVersion']} {doc['kind']} is not in the vendored Strimzi CRDs")
            continue
        validator = jsonschema.Draft202012Validator(schemas[doc["kind"]])
        problems += [f"{where}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        # The CRDs say only `metadata: object`: the API server checks it as ObjectMeta.
        problems += builtin_problems([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}])
    return problems


# --- checks: the bus -------------------------------------------------------------------------------------------

def topic_problems(docs: list[dict], prefix: str) -> list[str]:
    bus = declared()
    expected = {name: (spec.partitions, spec.replication_factor, dict(spec.configs))
                for name in bus.all_topics(prefix) for spec in [bus.spec_of(name, prefix)]}
    topics = of_kind(docs, "KafkaTopic")
    found = {t["spec"]["topicName"]: (t["spec"]["partitions"], t["spec"]["replicas"],
                                      {k: str(v) for k, v in t["spec"].get("config", {}).items()}) for t in topics}
    problems = [f"KafkaTopics name {len(topics)} topics for {len(found)} names"] if len(found) != len(topics) else []
    for name in sorted(expected.keys() | found.keys()):
        if expected.get(name) != found.get(name):
            problems.append(f"topic {name}: chart {found.get(name)} != bus.py {expected.get(name)}")
    return problems


def acls_of(docs: list[dict]) -> set[AclBinding]:
    return {AclBinding(f"User:{user['metadata']['name']}", RESOURCE_TYPES[rule["resource"]["type"]],
                       PATTERN_TYPES[rule["resource"]["patternType"]], rule["resource"]["name"], operation.upper())
            for user in of_kind(docs, "KafkaUser") for rule in user["spec"]["authorization"]["acls"]
            for operation in rule["operations"]}


def acl_problems(docs: list[dict], prefix: str) -> list[str]:
    bus, users = declared(), of_kind(docs, "KafkaUser")
    problems = []
    names = sorted(u["metadata"]["name"] for u in users)
    if names != sorted(bus.principal_names()):
        problems.append(f"KafkaUsers {names} != bus.py's principals {sorted(bus.principal_names())}")
    for user in users:
        where = f"KafkaUser/{user['metadata']['name']}"
        if user["spec"].get("authentication") != {"type": "scram-sha-512"}:
            problems.append(f"{where}: authentication is not SCRAM-SHA-512")
        if user["spec"]["authorization"]["type"] != "simple":
            problems.append(f"{where}: authorization is not the standard authorizer's (simple)")
        for rule in user["spec"]["authorization"]["acls"]:
            if rule.get("type", "allow") != "allow" or rule.get("host", "*") != "*":
                problems.append(f"{where}: a rule that is not a plain ALLOW: {rule}")
    found, expected = acls_of(docs), set(bus.acls(prefix))
    problems += [f"ACL in the chart, not derived by bus.py: {a}" for a in sorted(found - expected)]
    problems += [f"ACL derived by bus.py, missing from the chart: {a}" for a in sorted(expected - found)]
    return problems


def kafka_problems(docs: list[dict]) -> list[str]:
    bus = declared()
    [kafka] = of_kind(docs, "Kafka")
    cluster = kafka["metadata"]["name"]
    pools = [p for p in of_kind(docs, "KafkaNodePool") if p["metadata"]["labels"]["strimzi.io/cluster"] == cluster]
    problems = []
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    most_replicas = max(bus.spec_of(n).replication_factor for n in bus.all_topics())
    if controllers < 3 or controllers % 2 == 0:
        problems.append(f"{controllers} KRaft controllers: a quorum wants an odd number, at least 3")
    if brokers < most_replicas:
        problems.append(f"{brokers} brokers for topics of {most_replicas} replicas")
    spec = kafka["spec"]["kafka"]
    if spec.get("authorization", {}).get("type") != "simple":
        problems.append("the brokers do not run the standard authorizer")
    for listener in spec["listeners"]:
        if not listener["tls"] or listener.get("authentication", {}).get("type") != "scram-sha-512":
            problems.append(f"listener {listener['name']} is not TLS with SCRAM-SHA-512")
    config = {k: str(v).lower() for k, v in spec.get("config", {}).items()}
    default_isr = min(bus.spec_of(n).configs["min.insync.replicas"] for n in bus.all_topics())
    if config.get("auto.create.topics.enable") != "false":
        problems.append("the brokers may auto-create topics: topics come from bus.yaml only")
    if config.get("min.insync.replicas") != default_isr:
        problems.append(f"brokers' min.insync.replicas {config.get('min.insync.replicas')} != bus.yaml's")
    if not {"topicOperator", "userOperator"} <= set(kafka["spec"].get("entityOperator", {})):
        problems.append("no topic and user operators: the KafkaTopics and KafkaUsers would never be applied")
    for resource in of_kind(docs, "KafkaTopic") + of_kind(docs, "KafkaUser"):
        if resource["metadata"]["labels"].get("strimzi.io/cluster") != cluster:
            problems.append(f"{resource['kind']}/{resource['metadata']['name']} is not for cluster {cluster}")
    return problems


# --- checks: the services --------------------------------------------------------------------------------------

def local_ports() -> dict[str, int]:
    """The services' ports as deploy/services.sh (make up) starts them."""
    text = (REPO / "deploy" / "services.sh").read_text()
    return {name: int(port) for name, port in re.findall(r'"(\w+):\$\{\w+_PORT:-(\d+)\}"', text)}


def compose_ports() -> dict[str, int]:
    """The port each service's command in docker-compose.yml names, where it names one."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    ports = {}
    for name in SERVICES:
        command = compose.get("services", {}).get(name, {}).get("command")
        if isinstance(command, list) and "--port" in command:
            ports[name] = int(command[command.index("--port") + 1])
    return ports


def benchmark_peak_rss_mib() -> dict[str, int]:
    """The highest peak RSS (P6) per service among all the runs in docs/benchmarks.md."""
    rows = [line for line in (REPO / "docs" / "benchmarks.md").read_text().splitlines()
            if line.startswith("| P6 peak RSS: intake, referral, notification")]
    runs = [tuple(map(int, m)) for row in rows for m in re.findall(r"(\d+), (\d+), (\d+) MiB", row)]
    assert runs, "docs/benchmarks.md: no P6 figures found"
    return {service: max(run[i] for run in runs) for i, service in enumerate(SERVICES)}


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[:-len(unit)]) * factor
    return float(quantity) / 2**20


def routes_of(service: str) -> set[str]:
    return set(json.loads((REPO / "contracts" / "openapi" / f"{service}.json").read_text())["paths"])


def settings_variables(service: str) -> set[str]:
    """Every environment variable the service's settings class reads: its alias, else env_prefix + field."""
    module, name = SETTINGS_CLASSES[service].split(":")
    settings = getattr(importlib.import_module(module), name)
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"{prefix}{field_name}".upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.update(str(choice).upper() for choice in alias.choices)
    return names


def _port_of(container: dict, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def service_problems(docs: list[dict]) -> list[str]:
    problems = []
    expected_ports, compose = local_ports(), compose_ports()
    peaks = benchmark_peak_rss_mib()
    cluster = of_kind(docs, "Kafka")[0]["metadata"]["name"] if of_kind(docs, "Kafka") else None
    listener_port = of_kind(docs, "Kafka")[0]["spec"]["kafka"]["listeners"][0]["port"] if cluster else None
    users = {u["metadata"]["name"] for u in of_kind(docs, "KafkaUser")}
    for service in SERVICES:
        deployment = deployment_of(docs, service)
        pod = deployment["spec"]["template"]["spec"]
        container = container_of(deployment)
        command = container.get("command", [])
        where = f"{service}'s Deployment"
        port = expected_ports[service]
        if compose.get(service, port) != port:
            problems.append(f"{service}: docker-compose.yml's port {compose[service]} != services.sh's {port}")
        if command[:3] != ["uvicorn", "--factory", f"{service}.entrypoints.app:create_app"]:
            problems.append(f"{where}: command {command} is not the service's uvicorn factory")
        if "--port" not in command or int(command[command.index("--port") + 1]) != port:
            problems.append(f"{where}: does not listen on {port} (deploy/services.sh)")
        if _port_of(container, "http") != port:
            problems.append(f"{where}: containerPort http != {port}")
        routes = routes_of(service)
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or _port_of(container, get.get("port")) != port:
                problems.append(f"{where}: {probe} is not GET {path} on {port}")
            if path not in routes:
                problems.append(f"{service} has no route {path} (contracts/openapi/{service}.json)")
        [svc] = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == deployment["metadata"]["name"]]
        if svc["spec"]["selector"].items() - deployment["spec"]["template"]["metadata"]["labels"].items():
            problems.append(f"{service}'s Service selects no pod of its Deployment")
        if [_port_of(container, p["targetPort"]) for p in svc["spec"]["ports"]] != [port]:
            problems.append(f"{service}'s Service does not reach port {port}")
        pdbs = [p for p in of_kind(docs, "PodDisruptionBudget")
                if p["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]]
        if len(pdbs) != 1:
            problems.append(f"{service}: {len(pdbs)} PodDisruptionBudgets for its pods")
        security, pod_security = container.get("securityContext", {}), pod.get("securityContext", {})
        if not (pod_security.get("runAsNonRoot") and security.get("readOnlyRootFilesystem")
                and security.get("allowPrivilegeEscalation") is False):
            problems.append(f"{where}: not non-root with a read-only root filesystem")
        memory = container.get("resources", {}).get("requests", {}).get("memory")
        if memory is None or mebibytes(memory) < peaks[service]:
            problems.append(f"{where}: memory request {memory} below the benchmark's peak RSS {peaks[service]} MiB")
        problems += [f"{where}: {p}" for p in environment_problems(service, container, pod, cluster, listener_port,
                                                                   users)]
    return problems


def environment_problems(service: str, container: dict, pod: dict, cluster: str | None,
                         listener_port: int | None, users: set[str]) -> list[str]:
    env, problems = env_of(container), []
    known = settings_variables(service)
    problems += [f"sets {name}, which the service does not read" for name in env
                 if name not in known and not OTEL_VARIABLE.fullmatch(name)]
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    def secret_behind(path: str) -> tuple[str, str] | None:
        """(secret, key) of the file at path, through the mounts."""
        directory, file = path.rsplit("/", 1)
        volume = volumes.get(mounts.get(directory, ""), {}).get("secret")
        if not volume:
            return None
        item = next((i for i in volume.get("items", [{"key": file, "path": file}]) if i["path"] == file), None)
        return (volume["secretName"], item["key"]) if item else None

    if env.get("ENLACE_KAFKA_SASL_USERNAME") != service or service not in users:
        problems.append(f"Kafka user {env.get('ENLACE_KAFKA_SASL_USERNAME')!r} is not its principal {service}")
    if secret_behind(env.get("ENLACE_KAFKA_SASL_PASSWORD_FILE", "/")) != (service, "password"):
        problems.append("the SASL password file is not the user operator's Secret of its KafkaUser")
    if (env.get("ENLACE_KAFKA_SECURITY_PROTOCOL"), env.get("ENLACE_KAFKA_SASL_MECHANISM")) != \
            ("SASL_SSL", "SCRAM-SHA-512"):
        problems.append("Kafka is not reached over SASL_SSL with SCRAM-SHA-512")
    if cluster and secret_behind(env.get("ENLACE_KAFKA_SSL_CAFILE", "/")) != (f"{cluster}-cluster-ca-cert", "ca.crt"):
        problems.append("the CA file is not Strimzi's cluster CA")
    if cluster and env.get("ENLACE_KAFKA_BOOTSTRAP_SERVERS") != f"{cluster}-kafka-bootstrap:{listener_port}":
        problems.append(f"bootstrap {env.get('ENLACE_KAFKA_BOOTSTRAP_SERVERS')} is not the cluster's listener")
    if not secret_behind(env.get("ENLACE_DATA_KEY_FILE", "/")):
        problems.append("ENLACE_DATA_KEY_FILE is not a mounted Secret")
    database = env.get(f"{service.upper()}_DATABASE_URL")
    if not isinstance(database, dict) or "secretKeyRef" not in database:
        problems.append("the database URL does not come from a Secret")
    seed = env.get("REFERRAL_DIRECTORY_SEED_PATH" if service == "referral" else "ENLACE_DIRECTORY_SEED_PATH", "/")
    directory, file = seed.rsplit("/", 1)
    config_map = volumes.get(mounts.get(directory, ""), {}).get("configMap")
    if not config_map or file not in {i["path"] for i in config_map.get("items", [])}:
        problems.append(f"the directory seed {seed} is not a mounted ConfigMap")
    return problems


def migration_problems(docs: list[dict]) -> list[str]:
    problems = []
    commands = {c.name or c.callback.__name__ for c in migrations.cli.registered_commands}
    jobs = of_kind(docs, "Job")
    for service in SERVICES:
        mine = [j for j in jobs if j["metadata"]["labels"].get("enlace.io/service") == service]
        if len(mine) != 1:
            problems.append(f"{service}: {len(mine)} migration Jobs")
            continue
        [job] = mine
        hooks = set(job["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(","))
        if "pre-upgrade" not in hooks:
            problems.append(f"{service}'s migrations do not run before an upgrade rolls out")
        container = container_of(job)
        command = container["command"]
        if command[:3] != ["python", "-m", "enlace_platform.migrations"] or command[3:] != [service, "upgrade"] \
                or "upgrade" not in commands:
            problems.append(f"{service}'s Job runs {command}, not enlace_platform.migrations {service} upgrade")
        unknown = set(env_of(container)) - settings_variables(service)
        if unknown:
            problems.append(f"{service}'s Job sets {sorted(unknown)}, which the service does not read")
        if f"{service.upper()}_DATABASE_URL" not in env_of(container):
            problems.append(f"{service}'s Job has no database URL")
    return problems


# --- checks: network policies ----------------------------------------------------------------------------------

def _ports(rule: dict) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


def network_problems(docs: list[dict]) -> list[str]:
    problems = []
    policies = of_kind(docs, "NetworkPolicy")
    cluster = of_kind(docs, "Kafka")[0]["metadata"]["name"]
    kafka_port = of_kind(docs, "Kafka")[0]["spec"]["kafka"]["listeners"][0]["port"]
    for policy in policies:
        where = f"NetworkPolicy/{policy['metadata']['name']}"
        spec = policy["spec"]
        if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
            problems.append(f"{where}: does not govern both directions")
        for direction, peers in (("ingress", "from"), ("egress", "to")):
            for rule in spec.get(direction, []):
                if not rule.get(peers) or not rule.get("ports"):
                    problems.append(f"{where}: an {direction} rule open to every peer or every port: {rule}")
    for service in SERVICES:
        deployment = deployment_of(docs, service)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies if not p["spec"]["podSelector"]["matchLabels"].items() - labels.items()]
        if len(mine) != 1:
            problems.append(f"{service}: {len(mine)} NetworkPolicies select its pods")
            continue
        spec = mine[0]["spec"]
        port = _port_of(container_of(deployment), "http")
        if {p for rule in spec.get("ingress", []) for p in _ports(rule)} != {port}:
            problems.append(f"{service}: ingress opens more than its API port {port}")
        egress = spec.get("egress", [])
        expected = {53, 5432, kafka_port, 4318, 443} | ({587} if service == "notification" else set())
        found = {p for rule in egress for p in _ports(rule)}
        if found != expected:
            problems.append(f"{service}: egress ports {sorted(found)} != {sorted(expected)}")
        kafka_rules = [r for r in egress if kafka_port in _ports(r)]
        if not kafka_rules or any(peer.get("podSelector", {}).get("matchLabels", {}).get("strimzi.io/cluster")
                                  != cluster for rule in kafka_rules for peer in rule["to"]):
            problems.append(f"{service}: Kafka egress is not to the brokers of {cluster}")
    [jobs] = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
              == "migrations"] or [None]
    if jobs is None:
        problems.append("no NetworkPolicy for the migration Jobs")
    elif jobs["spec"].get("ingress") or {p for r in jobs["spec"]["egress"] for p in _ports(r)} != {53, 5432}:
        problems.append("the migration Jobs reach more than DNS and PostgreSQL, or accept connections")
    return problems


# --- the tests -------------------------------------------------------------------------------------------------

def test_the_charts_bus_data_is_what_render_bus_derives_from_bus_yaml():
    result = subprocess.run([sys.executable, str(K8S / "render_bus.py"), "--check"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_builtin_resource_validates_against_the_kubernetes_schemas(rendered, rendered_variant):
    for docs in (rendered, rendered_variant):
        assert builtin_problems(docs) == []
        assert name_problems(docs) == []
    assert {d["kind"] for d in rendered} == {
        "ConfigMap", "Deployment", "Job", "Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "NetworkPolicy",
        "PodDisruptionBudget", "Service", "ServiceAccount"}
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "Job", "ServiceAccount"):
        assert len(of_kind(rendered, kind)) == len(SERVICES), kind
    # The chart-made Secrets and the directory ConfigMap.
    assert len(of_kind(rendered_variant, "Secret")) == 2 * len(SERVICES)
    assert len(of_kind(rendered, "ConfigMap")) == 1


def test_every_strimzi_resource_validates_against_strimzis_crds(rendered, rendered_variant):
    for docs in (rendered, rendered_variant):
        assert strimzi_problems(docs) == []
    assert {d["kind"] for d in rendered if d["apiVersion"] == STRIMZI_API} == \
        {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}


@pytest.mark.parametrize("variant", ["no prefix", "prefixed"])
def test_the_kafka_topics_are_bus_pys_topics_with_their_settings(variant, rendered, rendered_variant):
    docs = rendered if variant == "no prefix" else rendered_variant
    prefix = rendered_topic_prefix(docs)
    assert prefix == ("" if variant == "no prefix" else PREFIX)
    assert topic_problems(docs, prefix) == []


@pytest.mark.parametrize("variant", ["no prefix", "prefixed"])
def test_the_kafka_users_acls_are_exactly_those_bus_py_derives(variant, rendered, rendered_variant):
    docs = rendered if variant == "no prefix" else rendered_variant
    assert acl_problems(docs, rendered_topic_prefix(docs)) == []


def test_the_kafka_cluster_is_kraft_with_tls_scram_and_the_standard_authorizer(rendered):
    assert kafka_problems(rendered) == []


def test_the_services_run_as_make_up_runs_them_with_probes_settings_and_credentials(rendered, rendered_variant):
    assert service_problems(rendered) == []
    assert service_problems(rendered_variant) == []


def test_each_service_has_a_migration_job_running_its_alembic_upgrade(rendered):
    assert migration_problems(rendered) == []


def test_network_policies_open_only_what_the_architecture_needs(rendered):
    assert network_problems(rendered) == []


def test_helm_lint_passes_strict(helm):
    result = subprocess.run([helm, "lint", "--strict", str(CHART), "-f", str(EXAMPLE_VALUES), "--set-file",
                             f"directory.seed={DEMO_DIRECTORY}", "--kube-version", KUBERNETES_VERSION],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_for_an_existing_strimzi_cluster_the_chart_still_carries_the_topics_and_acls(helm):
    docs = render(helm, "--set", "kafka.create=false", "--set", "networkPolicy.enabled=false",
                  "--set", "migrations.enabled=false")
    assert not of_kind(docs, "Kafka") and not of_kind(docs, "NetworkPolicy") and not of_kind(docs, "Job")
    assert builtin_problems(docs) == [] and strimzi_problems(docs) == []
    assert topic_problems(docs, "") == [] and acl_problems(docs, "") == [] and service_problems(docs) == []


def test_the_directory_configmap_is_a_seed_the_services_read(rendered, tmp_path):
    [config_map] = of_kind(rendered, "ConfigMap")
    seed = tmp_path / "agencies.json"
    seed.write_text(config_map["data"]["agencies.json"])
    assert json.loads(seed.read_text()) == json.loads(DEMO_DIRECTORY.read_text())
    assert {a.id for a in seed_agencies(seed)} == {a.id for a in seed_agencies(DEMO_DIRECTORY)}


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "services.intake.publicBaseUrl="], "services.intake.publicBaseUrl is required"),
    (["--set", "database.referral.existingSecret="], "database.referral: give existingSecret"),
    (["--set", "dataKeys.notification.existingSecret=", "--set", "dataKeys.notification.value=c2hvcnQ="],
     "dataKeys.notification.value must be the base64 of 32 bytes"),
    (["--set", "networkPolicy.postgres.to=null"], "networkPolicy.postgres.to is required"),
    (["--set", "auth.trustedIssuers=null"], "auth: set auth.trustedIssuers"),
    (["--set", "kafka.brokers.replicas=2"], "bus.yaml's topics need 3 replicas"),
    (["--set-file", "directory.seed={not_a_directory}"], "directory.seed must be a directory file"),
])
def test_rendering_refuses_what_a_country_must_give(helm, args, message, tmp_path):
    not_a_directory = tmp_path / "services.json"
    not_a_directory.write_text('{"services": []}')
    args = [arg.format(not_a_directory=not_a_directory) for arg in args]
    result = helm_template(helm, "-f", str(EXAMPLE_VALUES), "--set-file", f"directory.seed={DEMO_DIRECTORY}", *args)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# --- mutation tests: each check finds a planted mistake --------------------------------------------------------

def _mutated(docs: list[dict], kind: str, change, name: str | None = None) -> list[dict]:
    docs = copy.deepcopy(docs)
    target = next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))
    change(target)
    return docs


def test_the_checks_find_planted_mistakes(rendered):
    def drop_acl(user):
        user["spec"]["authorization"]["acls"][0]["operations"].pop()

    def widen_acl(user):
        user["spec"]["authorization"]["acls"].append(
            {"resource": {"type": "topic", "name": "intake.case", "patternType": "literal"}, "operations": ["Write"]})

    def retention(topic):
        topic["spec"]["config"]["retention.ms"] = "1"

    def probe(deployment):
        container_of(deployment)["readinessProbe"]["httpGet"]["path"] = "/ready"

    def unknown_field(deployment):
        container_of(deployment)["imagePullPolicyy"] = "Always"

    def strimzi_typo(kafka):
        kafka["spec"]["kafka"]["listener"] = []

    def open_egress(policy):
        policy["spec"]["egress"].append({"ports": [{"port": 22, "protocol": "TCP"}]})

    def stray_variable(deployment):
        container_of(deployment)["env"].append({"name": "ENLACE_KAFKA_BOOTSTRAP", "value": "x"})

    def plain_kafka(deployment):
        for e in container_of(deployment)["env"]:
            if e["name"] == "ENLACE_KAFKA_SECURITY_PROTOCOL":
                e["value"] = "PLAINTEXT"

    cases = [
        (acl_problems, "KafkaUser", drop_acl, "intake"),
        (acl_problems, "KafkaUser", widen_acl, "referral"),
        (topic_problems, "KafkaTopic", retention, None),
        (service_problems, "Deployment", probe, None),
        (builtin_problems, "Deployment", unknown_field, None),
        (strimzi_problems, "Kafka", strimzi_typo, None),
        (network_problems, "NetworkPolicy", open_egress, None),
        (service_problems, "Deployment", stray_variable, None),
        (service_problems, "Deployment", plain_kafka, None),
    ]
    for check, kind, change, name in cases:
        assert (check(rendered, "") if check in (acl_problems, topic_problems) else check(rendered)) == [], check
        mutated = _mutated(rendered, kind, change, name)
        found = check(mutated, "") if check in (acl_problems, topic_problems) else check(mutated)
        assert found, f"{check.__name__} missed {change.__name__}"

"""docker-compose.yml, checked without a Docker engine (issue 14, item 5).

No engine runs on the project's machines or CI, so what compose would find out at `up` is checked here against the
code and the pinned versions:

- the file against the Compose Specification's JSON schema. tests/deploy/compose-spec.schema.json is the
  compose-spec project's schema (Apache-2.0) as the npm package dclint 3.1.0 ships it
  (package/schemas/compose.schema.json, sha256 46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496);
- every path it names (build context, Dockerfile, bind mounts, secret files, paths inside the containers);
- every port against the command, the health check, the listeners and the URLs that reach it;
- every environment variable against the settings classes (env_prefix + field name, or the field's alias), the
  variables the code reads itself, and the images' own variables (OTEL_*, POSTGRES_*, KAFKA_*);
- every image tag against the pinned versions; the topics job against the module's own command line;
- the secrets and Kafka principals against bus.yaml.

Each check is a function returning the problems it found: the tests assert there are none, and the mutation
tests below show that each one finds a planted mistake in a copy.
"""

import ast
import copy
import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer
import yaml

from enlace_platform import bus, dev_issuer, migrations
from enlace_platform.settings import ServiceSettings
from tests.support.postgres import find_bin_dir

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.schema.json")
DOCKERFILE = REPO / "deploy" / "Dockerfile"
ENTRYPOINT_SCRIPT = REPO / "deploy" / "compose" / "entrypoint.sh"
MAKE_SECRETS = REPO / "deploy" / "compose" / "make-secrets.sh"
INIT_DATABASES = REPO / "deploy" / "compose" / "postgres" / "init-databases.sh"
KAFKA_POM = REPO / "deploy" / "kafka" / "pom.xml"
ZIPKIN_SCRIPT = REPO / "deploy" / "zipkin" / "zipkin.sh"
ENLACE_IMAGE = "enlace:local"
# Files compose mounts that no checkout holds: made before the first `up`, as docker-compose.yml's header says.
GENERATED = (REPO / ".run" / "compose" / "secrets",  # deploy/compose/make-secrets.sh (tested below)
             dev_issuer.DEFAULT_KEY_DIR / "public.pem")  # make token: enlace_platform.dev_issuer
SECRETS_DIR = "/run/secrets"  # where compose mounts a service's secrets

# Variables of the third-party images, by image name: their own documented settings.
IMAGE_VARIABLES: dict[str, tuple[re.Pattern, ...]] = {
    "apache/kafka": (re.compile(r"KAFKA_[A-Z0-9_]+"),),  # kafka-run-class.sh: KAFKA_HEAP_OPTS, KAFKA_OPTS, ...
    "postgres": (re.compile(r"POSTGRES_[A-Z0-9_]+"), re.compile(r"PGDATA")),  # the image's docker-entrypoint.sh
    # zipkin-server: in-memory storage size; the image's start-zipkin passes JAVA_OPTS to the JVM.
    "openzipkin/zipkin": (re.compile(r"MEM_MAX_SPANS|STORAGE_TYPE|JAVA_OPTS|QUERY_PORT"),),
}
OTEL_VARIABLE = re.compile(r"OTEL_[A-Z0-9_]+")  # read by the OpenTelemetry SDK and enlace_platform.telemetry


# ---------------------------------------------------------------------------------------------------------------
# Reading the files

def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def services(doc: dict) -> dict[str, dict]:
    return doc.get("services", {})


def is_enlace_image(service: dict) -> bool:
    return service.get("image") == ENLACE_IMAGE or "build" in service


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def healthcheck_text(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def enlace_service_of(service: dict) -> str | None:
    """intake, referral or notification for a uvicorn service of the Enlace image, else None."""
    cmd = command(service)
    if not is_enlace_image(service) or not cmd or cmd[0] != "uvicorn":
        return None
    [app] = [c for c in cmd if c.endswith(":create_app")]
    return app.split(".", 1)[0]


def option(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def published(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each short-syntax port."""
    out = []
    for entry in service.get("ports") or []:
        parts = str(entry).split(":")
        address, host_port, container_port = parts if len(parts) == 3 else ("0.0.0.0", *parts)
        out.append((address, int(host_port), int(container_port.split("/")[0])))
    return out


def image_name_and_tag(image: str) -> tuple[str, str | None]:
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", None)
    return name, tag


def properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path as written, container path) of every bind mount (a source that is a path, not a volume)."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type") == "bind":
                out.append((entry["source"], entry["target"]))
            continue
        source, target = str(entry).split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def secret_targets(doc: dict, service: dict) -> dict[str, Path]:
    """Container path -> host file of every secret the service mounts."""
    out = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, str):
            name, target = entry, entry
        else:
            name, target = entry["source"], entry.get("target", entry["source"])
        source = doc.get("secrets", {}).get(name, {})
        target = target if target.startswith("/") else f"{SECRETS_DIR}/{target}"
        out[target] = REPO / source["file"] if "file" in source else Path("/nonexistent/undeclared-secret")
    return out


def container_files(doc: dict, service: dict) -> dict[str, Path]:
    """Container path -> repo path of what compose puts into the container (bind mounts and secrets)."""
    files = {target: (REPO / source).resolve() for source, target in bind_mounts(service)}
    files.update(secret_targets(doc, service))
    return files


def dockerfile_copies() -> dict[str, Path]:
    """Container path -> repo path of the Enlace image's COPY lines (relative ones under its WORKDIR)."""
    workdir, out = "/", {}
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "WORKDIR":
            workdir = words[1]
        elif words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            *sources, dest = [w for w in words[1:] if not w.startswith("--")]
            for source in sources:
                target = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest.removeprefix('./')}"
                if target.endswith("/") or len(sources) > 1:
                    target = f"{target.rstrip('/')}/{Path(source).name}"
                out[target.rstrip("/")] = REPO / source
    return out


def generated_or_present(path: Path) -> bool:
    path = path.resolve()
    return path.exists() or any(path == g.resolve() or g.resolve() in path.parents for g in GENERATED)


def resolve(path: str, mounts: dict[str, Path]) -> Path | None:
    """The repo file behind a container path, through the longest mount or COPY that holds it."""
    for prefix in sorted(mounts, key=len, reverse=True):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return mounts[prefix] / path[len(prefix):].lstrip("/") if path != prefix else mounts[prefix]
    return None


# ---------------------------------------------------------------------------------------------------------------
# What the code says

def settings_class(service_name: str | None) -> type[ServiceSettings]:
    """The service's settings class (as enlace_platform.migrations finds it); ServiceSettings for the topics job."""
    if service_name is None:
        return ServiceSettings
    [cls] = [v for v in vars(importlib.import_module(f"{service_name}.config")).values()
             if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings]
    return cls


def settings_variables(cls: type[ServiceSettings]) -> set[str]:
    """The environment variables pydantic-settings reads into cls: a field's alias(es), and env_prefix + its name
    when it has none or the model also populates by name."""
    prefix = cls.model_config.get("env_prefix", "")
    by_name = cls.model_config.get("populate_by_name", False)
    names = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        aliases = [alias] if isinstance(alias, str) else [
            c for c in getattr(alias, "choices", []) if isinstance(c, str)]
        names.update(a.upper() for a in aliases)
        if not aliases or by_name:
            names.add(f"{prefix}{field_name}".upper())
    return names


def variables_read_by_code() -> set[str]:
    """Names the code reads from the environment itself: os.environ[...] / .get(...), os.getenv(...), and typer's
    envvar=..., with module-level string constants resolved."""
    found = set()
    for path in [*REPO.glob("libs/**/*.py"), *REPO.glob("services/*/*/**/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                     and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                     for t in node.targets if isinstance(t, ast.Name)}

        def text(node: ast.AST) -> str | None:
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            return constants.get(node.id) if isinstance(node, ast.Name) else None

        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                if func in ("os.environ.get", "os.getenv", "os.environ.setdefault") and node.args:
                    found.add(text(node.args[0]))
                found.update(text(k.value) for k in node.keywords if k.arg == "envvar")
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                found.add(text(node.slice))
    return {name for name in found if name}


def variables_read_by_entrypoint() -> set[str]:
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", ENTRYPOINT_SCRIPT.read_text(encoding="utf-8")))


def kafka_version() -> str:
    return re.search(r"<kafka.version>([^<]+)</kafka.version>", KAFKA_POM.read_text(encoding="utf-8")).group(1)


def zipkin_version() -> str:
    return re.search(r'^version="([^"]+)"', ZIPKIN_SCRIPT.read_text(encoding="utf-8"), re.M).group(1)


def postgres_lane_major() -> str:
    """The major version of the PostgreSQL server the tests/postgres lane runs on this machine."""
    done = subprocess.run([str(find_bin_dir() / "postgres"), "--version"], capture_output=True, text=True, check=True)
    return re.search(r"\) (\d+)", done.stdout).group(1)


def kafka_properties(doc: dict) -> dict[str, str]:
    """The broker's server.properties, found through the kafka service's entrypoint and bind mounts; empty when
    it is not there (path_problems says so)."""
    kafka = services(doc)["kafka"]
    script = resolve(next((w for w in kafka.get("entrypoint") or [] if w.endswith(".sh")), ""),
                     container_files(doc, kafka))
    config = script.parent / "server.properties" if script else None
    return properties(config) if config and config.is_file() else {}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, address = item.split("://")
        host, port = address.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The checks: each returns the problems it finds in a compose document

def schema_problems(doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def path_problems(doc: dict) -> list[str]:
    problems = []
    copies = dockerfile_copies()
    for name, service in services(doc).items():
        build = service.get("build")
        if build:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            if not context.is_dir():
                problems.append(f"{name}: build context {context} missing")
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if dockerfile.resolve() != DOCKERFILE:
                problems.append(f"{name}: builds {dockerfile}, not deploy/Dockerfile")
        for source, target in bind_mounts(service):
            if not generated_or_present(REPO / source):
                problems.append(f"{name}: bind mount source {source} does not exist")
        mounts = container_files(doc, service)
        if is_enlace_image(service):
            mounts = {**copies, **mounts}
        # Paths the container is told to read: the entrypoint's script, and variables naming files.
        wanted = [w for w in (service.get("entrypoint") or []) if w.startswith("/") and w.endswith(".sh")]
        wanted += [v for k, v in environment(service).items()
                   if v.startswith("/") and re.search(r"(_FILE|_PATH|_CAFILE|_DIR)$", k)]
        for path in wanted:
            host = resolve(path, mounts)
            if host is None or not generated_or_present(host):
                problems.append(f"{name}: {path} is neither mounted nor copied into the image")
    for source in copies.values():
        if not source.exists():
            problems.append(f"deploy/Dockerfile copies {source.relative_to(REPO)}, which does not exist")
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', DOCKERFILE.read_text(encoding="utf-8"), re.M)
    if entry and not any(target.endswith("/" + entry.group(1)) for target in copies):
        problems.append(f"deploy/Dockerfile's ENTRYPOINT {entry.group(1)} is not copied into the image")
    # The broker reads its key, certificate and CA from the secrets its service mounts.
    kafka_mounts = container_files(doc, services(doc)["kafka"])
    if not kafka_properties(doc):
        problems.append("kafka: no server.properties beside the script its entrypoint runs")
    # The health check logs in with the client settings the start script writes.
    start = resolve(next((w for w in services(doc)["kafka"].get("entrypoint") or [] if w.endswith(".sh")), ""),
                    kafka_mounts)
    written = re.search(r"^conf=(\S+)", start.read_text(encoding="utf-8"), re.M) if start and start.is_file() else None
    config = re.search(r"--command-config (\S+)", healthcheck_text(services(doc)["kafka"]))
    if not written or not config or config.group(1) != f"{written.group(1)}/admin.properties":
        problems.append("kafka: the health check's --command-config is not the file start.sh writes")
    for key, value in kafka_properties(doc).items():
        if value.startswith(SECRETS_DIR) and value not in kafka_mounts:
            problems.append(f"server.properties {key}={value}: the kafka service mounts no such secret")
    return problems


def port_problems(doc: dict) -> list[str]:
    problems = []
    svc = services(doc)
    for name, service in svc.items():
        for address, _, _ in published(service):
            if address != "127.0.0.1":
                problems.append(f"{name}: publishes a port on {address}, not on loopback")
    for name, service in svc.items():
        if enlace_service_of(service) is None:
            continue
        port = int(option(command(service), "--port"))
        check = re.search(r"https?://[^:/]+:(\d+)/readyz", healthcheck_text(service))
        if not check or int(check.group(1)) != port:
            problems.append(f"{name}: health check does not ask /readyz on the command's port {port}")
        ports = published(service)
        if [p[2] for p in ports] != [port]:
            problems.append(f"{name}: publishes {ports}, the command listens on {port}")
        public = next((v for k, v in environment(service).items() if k.endswith("PUBLIC_BASE_URL")), None)
        if public and ports and urlsplit(public).port != ports[0][1]:
            problems.append(f"{name}: PUBLIC_BASE_URL {public} is not the published port {ports[0][1]}")
    # Kafka: the listeners, what is published and what clients and the health check dial.
    props = kafka_properties(doc)
    if not props:
        return [*problems, "kafka: its server.properties is not found"]
    bound, advertised = listeners(props["listeners"]), listeners(props["advertised.listeners"])
    kafka = svc["kafka"]
    internal_host, internal_port = advertised[props["inter.broker.listener.name"]]
    internal = f"{internal_host}:{internal_port}"
    if internal_host not in (kafka.get("hostname"), "kafka"):
        problems.append(f"kafka: advertises {internal}, which is not its name on the compose network")
    for address, host_port, container_port in published(kafka):
        names = [n for n, (_, p) in bound.items() if p == container_port]
        if not names or advertised.get(names[0]) != ("127.0.0.1", host_port):
            problems.append(f"kafka: publishes {container_port} as {host_port}, but no listener is advertised "
                            f"as 127.0.0.1:{host_port} there")
    for name, service in svc.items():
        bootstrap = environment(service).get("ENLACE_KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap is not None and bootstrap != internal:
            problems.append(f"{name}: ENLACE_KAFKA_BOOTSTRAP_SERVERS={bootstrap}, the broker advertises {internal}")
    if f"--bootstrap-server {internal}" not in healthcheck_text(kafka):
        problems.append(f"kafka: the health check does not dial {internal}")
    # PostgreSQL: every database URL reaches the port its health check asks.
    pg_port = int(re.search(r"--port\W+(\d+)", healthcheck_text(svc["postgres"])).group(1))
    for name, service in svc.items():
        for key, value in environment(service).items():
            if key.endswith("DATABASE_URL") and value.startswith("postgresql"):
                url = urlsplit(value)
                if (url.hostname, url.port) != ("postgres", pg_port):
                    problems.append(f"{name}: {key} reaches {url.hostname}:{url.port}, "
                                    f"PostgreSQL is postgres:{pg_port}")
    # Zipkin: the services' exporter, its health check and its published port.
    zipkin_port = int(re.search(r"://[^:/]+:(\d+)/health", healthcheck_text(svc["zipkin"])).group(1))
    if [p[2] for p in published(svc["zipkin"])] != [zipkin_port]:
        problems.append(f"zipkin: publishes {published(svc['zipkin'])}, its health check asks {zipkin_port}")
    for name, service in svc.items():
        endpoint = environment(service).get("OTEL_EXPORTER_ZIPKIN_ENDPOINT")
        if endpoint and (urlsplit(endpoint).hostname, urlsplit(endpoint).port) != ("zipkin", zipkin_port):
            problems.append(f"{name}: exports spans to {endpoint}, Zipkin listens on zipkin:{zipkin_port}")
    return problems


def variable_problems(doc: dict) -> list[str]:
    problems = []
    by_code = variables_read_by_code()
    by_entrypoint = variables_read_by_entrypoint()
    for name, service in services(doc).items():
        if is_enlace_image(service):
            cls = settings_class(enlace_service_of(service))
            known = settings_variables(cls) | by_code | by_entrypoint
            unknown = [v for v in environment(service) if v not in known and not OTEL_VARIABLE.fullmatch(v)]
            where = f"{cls.__name__}, the code or deploy/compose/entrypoint.sh"
        else:
            image = image_name_and_tag(service.get("image", ""))[0]
            patterns = IMAGE_VARIABLES.get(image, ())
            unknown = [v for v in environment(service) if not any(p.fullmatch(v) for p in patterns)]
            where = f"the {image or 'unnamed'} image"
        problems += [f"{name}: {v} is read by none of {where}" for v in unknown]
    return problems


def image_problems(doc: dict) -> list[str]:
    problems = []
    want = {"apache/kafka": kafka_version(), "openzipkin/zipkin": zipkin_version()}
    for name, service in services(doc).items():
        image = service.get("image")
        if not image:
            problems.append(f"{name}: no image")
            continue
        repo_name, tag = image_name_and_tag(image)
        if image == ENLACE_IMAGE:
            continue
        if not tag or tag == "latest":
            problems.append(f"{name}: {image} is not pinned")
        elif repo_name in want and tag != want[repo_name]:
            problems.append(f"{name}: {image}, but the project pins {repo_name.split('/')[-1]} {want[repo_name]}")
        elif repo_name == "postgres" and tag.split(".")[0].split("-")[0] != postgres_lane_major():
            problems.append(f"{name}: {image}, but the PostgreSQL test lane runs {postgres_lane_major()}")
    base = re.search(r"^FROM python:(\d+)\.(\d+)[.-]", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    machine = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not base or f"{base.group(1)}.{base.group(2)}" != machine:
        problems.append(f"deploy/Dockerfile's Python base is not {machine}, the machine's")
    return problems


def topics_job_problems(doc: dict) -> list[str]:
    """The one-shot topics job runs a module that exists, with options its command line accepts, as the broker's
    super user, with one replica per broker the file runs."""
    problems = []
    jobs = [(n, s) for n, s in services(doc).items() if is_enlace_image(s) and s.get("restart", "no") == "no"]
    if len(jobs) != 1:
        return [f"{len(jobs)} one-shot jobs of the Enlace image; want one, the topics job"]
    name, job = jobs[0]
    cmd = command(job)
    if cmd[:3] != ["python", "-m", "enlace_platform.topics"]:
        problems.append(f"{name}: runs {cmd}, not python -m enlace_platform.topics")
    try:
        module = importlib.import_module(cmd[2])
    except ImportError:
        return [*problems, f"{name}: there is no module {cmd[2]}"]
    app = typer.Typer()
    app.command()(module.main)
    try:
        typer.main.get_command(app).make_context("topics", list(cmd[3:]))
    except Exception as exc:  # click's UsageError: an option the module does not have
        problems.append(f"{name}: enlace_platform.topics refuses {cmd[3:]}: {exc}")
    if "--acls" not in cmd:
        problems.append(f"{name}: does not apply the ACLs (--acls)")
    env = environment(job)
    if env.get("ENLACE_KAFKA_SASL_USERNAME") != bus.ADMIN:
        problems.append(f"{name}: provisions as {env.get('ENLACE_KAFKA_SASL_USERNAME')}, not {bus.ADMIN}")
    brokers = [n for n, s in services(doc).items() if image_name_and_tag(s.get("image", ""))[0] == "apache/kafka"]
    if int(env.get("ENLACE_KAFKA_REPLICATION_FACTOR", bus.declared().topics["intake.case"].replication_factor)) \
            > len(brokers):
        problems.append(f"{name}: asks more replicas than the {len(brokers)} broker(s) the file runs")
    if job.get("restart", "no") != "no":
        problems.append(f"{name}: a one-shot job must not restart")
    return problems


def dependency_problems(doc: dict) -> list[str]:
    problems = []
    svc = services(doc)
    one_shot = {n for n, s in svc.items() if s.get("restart", "no") == "no"}
    for name, service in svc.items():
        if name not in one_shot and not service.get("healthcheck"):
            problems.append(f"{name}: long-running without a health check")
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for dependency, spec in depends.items():
            condition = (spec or {}).get("condition")
            if dependency in one_shot and condition != "service_completed_successfully":
                problems.append(f"{name}: waits for one-shot {dependency} with {condition}")
            elif dependency not in one_shot and condition not in ("service_healthy", "service_started"):
                problems.append(f"{name}: waits for {dependency} with {condition}")
    for name, service in svc.items():
        depends = service.get("depends_on") or {}
        if enlace_service_of(service) and isinstance(depends, dict):
            for needed in ("kafka", "postgres", *one_shot):
                if needed not in depends:
                    problems.append(f"{name}: starts without waiting for {needed}")
            if (depends.get("postgres") or {}).get("condition") != "service_healthy":
                problems.append(f"{name}: does not wait for PostgreSQL to be healthy")
    return problems


def secret_problems(doc: dict) -> list[str]:
    """Each service reads its own data key, database password and Kafka password, from a mounted secret, and
    nothing of another; the broker knows every principal of bus.yaml."""
    problems = []
    svc = services(doc)
    principals = {bus.ADMIN, *bus.declared().principal_names()}
    kafka_scram = {s.removeprefix("scram-") for s in svc["kafka"].get("secrets", []) if s.startswith("scram-")}
    if kafka_scram != principals:
        problems.append(f"kafka: SCRAM passwords for {sorted(kafka_scram)}, bus.yaml has {sorted(principals)}")
    enlace = {enlace_service_of(s): (n, s) for n, s in svc.items() if enlace_service_of(s)}
    if sorted(enlace) != sorted(migrations.SERVICES):
        problems.append(f"the file runs {sorted(enlace)}, Enlace is {sorted(migrations.SERVICES)}")
    for service_name, (name, service) in enlace.items():
        env = environment(service)
        mounted = secret_targets(doc, service)
        mine = {f"{SECRETS_DIR}/{s}" for s in (f"db-{service_name}", f"data-key-{service_name}",
                                                f"scram-{service_name}", "kafka-ca.pem")}
        if set(mounted) != mine:
            problems.append(f"{name}: mounts {sorted(mounted)}, wants exactly {sorted(mine)}")
        for key, want in (("ENLACE_DATA_KEY_FILE", f"data-key-{service_name}"),
                          ("PGPASSWORD_FILE", f"db-{service_name}"),
                          ("ENLACE_KAFKA_SASL_PASSWORD_FILE", f"scram-{service_name}"),
                          ("ENLACE_KAFKA_SSL_CAFILE", "kafka-ca.pem")):
            if env.get(key) != f"{SECRETS_DIR}/{want}":
                problems.append(f"{name}: {key}={env.get(key)}, wants its secret {SECRETS_DIR}/{want}")
        if env.get("ENLACE_KAFKA_SASL_USERNAME") != service_name:
            problems.append(f"{name}: Kafka principal {env.get('ENLACE_KAFKA_SASL_USERNAME')}, not {service_name}")
        url = urlsplit(next((v for k, v in env.items() if k.endswith("DATABASE_URL")), ""))
        if url.scheme != "postgresql+asyncpg" or url.username != service_name or url.path != f"/{service_name}" \
                or url.password:
            problems.append(f"{name}: database URL {url.geturl()} is not postgresql+asyncpg://{service_name}@…/"
                            f"{service_name} without a password")
    declared = doc.get("secrets", {})
    for secret_name, spec in declared.items():
        if "file" not in spec:
            problems.append(f"secret {secret_name}: not a file")
    used = {s if isinstance(s, str) else s["source"] for service in svc.values() for s in service.get("secrets", [])}
    problems += [f"secret {s} is used but not declared" for s in sorted(used - set(declared))]
    problems += [f"secret {s} is declared but unused" for s in sorted(set(declared) - used)]
    return problems


CHECKS = [schema_problems, path_problems, port_problems, variable_problems, image_problems, topics_job_problems,
          dependency_problems, secret_problems]


# ---------------------------------------------------------------------------------------------------------------
# The tests

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_compose_file_passes(compose, check):
    assert check(compose) == []


def test_make_secrets_makes_every_secret_file_compose_mounts(compose, tmp_path):
    """deploy/compose/make-secrets.sh, run for real: it makes each file the compose file names, readable by the
    containers' users, in a folder only its owner enters; a second run changes nothing."""
    out = tmp_path / "secrets"
    subprocess.run(["bash", str(MAKE_SECRETS), str(out)], check=True, capture_output=True, timeout=60)
    wanted = {Path(spec["file"]).name for spec in compose["secrets"].values()}
    assert {Path(spec["file"]).parent for spec in compose["secrets"].values()} == {Path("./.run/compose/secrets")}
    made = {p.name for p in out.iterdir()}
    assert wanted <= made, f"compose names secrets make-secrets.sh does not make: {sorted(wanted - made)}"
    assert made - wanted == {"kafka-ca.key"}  # the CA's key stays on the host
    assert out.stat().st_mode & 0o777 == 0o700
    assert all((out / name).stat().st_mode & 0o777 == 0o644 for name in wanted)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    subprocess.run(["bash", str(MAKE_SECRETS), str(out)], check=True, capture_output=True, timeout=60)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # What the services read: a 32-byte data key, a password; the broker's PEM keystore: key, then chain.
    from enlace_platform.crypto import load_key_encryption_key
    assert len(load_key_encryption_key(None, str(out / "data-key-notification"))) == 32
    keystore = (out / "kafka-broker.pem").read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----") and keystore.count("BEGIN CERTIFICATE") == 2


def test_init_databases_makes_the_databases_the_services_use(compose):
    script = INIT_DATABASES.read_text(encoding="utf-8")
    [loop] = re.findall(r"for service in ([a-z ]+); do", script)
    assert loop.split() == list(migrations.SERVICES)
    postgres = compose["services"]["postgres"]
    [(source, target)] = bind_mounts(postgres)
    assert (REPO / source).resolve() == INIT_DATABASES and target.startswith("/docker-entrypoint-initdb.d/")
    assert {f"db-{s}" for s in migrations.SERVICES} <= set(postgres["secrets"])


def test_the_zipkin_exporter_the_services_are_given_is_one_the_code_builds(compose, monkeypatch):
    from enlace_platform.telemetry import exporter_from_environment
    for name, service in compose["services"].items():
        otel = {k: v for k, v in environment(service).items() if OTEL_VARIABLE.fullmatch(k)}
        if not otel:
            continue
        for key, value in otel.items():
            monkeypatch.setenv(key, value)
        exporter = exporter_from_environment()
        assert exporter is not None and type(exporter).__name__ == "ZipkinExporter", name
        assert exporter.endpoint == otel["OTEL_EXPORTER_ZIPKIN_ENDPOINT"]


def test_the_settings_variable_derivation_matches_pydantic_settings(monkeypatch):
    """settings_variables is what pydantic-settings reads: each derived name, set, reaches the model."""
    from referral.config import ReferralSettings
    names = settings_variables(ReferralSettings)
    assert {"REFERRAL_DATABASE_URL", "ENLACE_KAFKA_SASL_USERNAME", "ENLACE_DATA_KEY_FILE"} <= names
    monkeypatch.setenv("REFERRAL_PUBLIC_BASE_URL", "http://probe:1")
    monkeypatch.setenv("ENLACE_KAFKA_SASL_USERNAME", "probe")
    settings = ReferralSettings()
    assert (settings.public_base_url, settings.kafka_sasl_username) == ("http://probe:1", "probe")
    assert "REFERRAL_KAFKA_SASL_USERNAME" not in names


# Planted mistakes: each must be found by its check (and so the checks above can fail).

_DELETE = object()


def _set(doc: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


MUTATIONS = [
    ("a key compose does not know", schema_problems, "services/kafka/helthcheck", {"test": ["NONE"]}),
    ("a typo in a variable", variable_problems, "services/intake/environment/INTAKE_DATABASE_ULR", "x"),
    ("another service's variable", variable_problems, "services/intake/environment/NOTIFICATION_SMTP_HOST", "x"),
    ("a third-party image given our variable", variable_problems, "services/postgres/environment/ENLACE_LOG_JSON",
     "true"),
    ("Kafka other than the pom's", image_problems, "services/kafka/image", "apache/kafka:4.0.0"),
    ("an unpinned image", image_problems, "services/zipkin/image", "openzipkin/zipkin:latest"),
    ("a PostgreSQL major the lane does not run", image_problems, "services/postgres/image", "postgres:16.4"),
    ("a health check on another port", port_problems, "services/referral/healthcheck/test/3",
     "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8009/readyz', timeout=2)"),
    ("a published port nothing listens on", port_problems, "services/notification/ports/0", "127.0.0.1:8003:8004"),
    ("a port open beyond loopback", port_problems, "services/zipkin/ports/0", "9411:9411"),
    ("the wrong bootstrap port", port_problems, "services/intake/environment/ENLACE_KAFKA_BOOTSTRAP_SERVERS",
     "kafka:9092"),
    ("a database URL to another port", port_problems, "services/referral/environment/REFERRAL_DATABASE_URL",
     "postgresql+asyncpg://referral@postgres:5433/referral"),
    ("a missing bind mount source", path_problems, "services/kafka/volumes/0",
     "./deploy/compose/kafak:/opt/enlace/kafka:ro"),
    ("a seed file that is not in the image", path_problems,
     "services/intake/environment/ENLACE_DIRECTORY_SEED_PATH", "/app/deploy/demo/agencies.yaml"),
    ("an option the topics module lacks", topics_job_problems, "services/topics/command/3", "--acl"),
    ("a module that does not exist", topics_job_problems, "services/topics/command/2", "enlace_platform.topic"),
    ("the topics job as a service principal", topics_job_problems,
     "services/topics/environment/ENLACE_KAFKA_SASL_USERNAME", "intake"),
    ("three replicas on one broker", topics_job_problems,
     "services/topics/environment/ENLACE_KAFKA_REPLICATION_FACTOR", "3"),
    ("a dependency without a condition", dependency_problems, "services/intake/depends_on", ["kafka", "postgres"]),
    ("a long-running service without a health check", dependency_problems, "services/zipkin/healthcheck", _DELETE),
    ("notification without its data key (the bug of issue 14)", secret_problems,
     "services/notification/environment/ENLACE_DATA_KEY_FILE", _DELETE),
    ("a data key inside the image", secret_problems, "services/intake/environment/ENLACE_DATA_KEY_FILE",
     "/app/intake-data.key"),
    ("another principal's password", secret_problems, "services/referral/secrets/2", "scram-intake"),
    ("a principal the broker was not given", secret_problems, "services/kafka/secrets/8", "kafka-ca.pem"),
    ("a password in the database URL", secret_problems, "services/intake/environment/INTAKE_DATABASE_URL",
     "postgresql+asyncpg://intake:hunter2@postgres:5432/intake"),
]


@pytest.mark.parametrize("what, check, path, value", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_check_finds_a_planted_mistake(compose, what, check, path, value):
    mutated = copy.deepcopy(compose)
    _set(mutated, path, value)
    assert check(mutated), f"{check.__name__} missed: {what}"


def test_the_operators_guide_lists_every_metric_the_code_defines():
    """deploy/README.md's monitoring table names exactly the metrics of ServiceMetrics and the services' scrape
    hooks (their names as defined: prometheus_client adds _total to counters)."""
    from enlace_platform.metrics import ServiceMetrics
    defined = {family.name for family in ServiceMetrics("probe").registry.collect()}
    for path in REPO.glob("services/*/*/service_layer/metrics.py"):
        defined |= set(re.findall(r'\.gauge\(\s*"([a-z_]+)"', path.read_text(encoding="utf-8")))
    guide = (REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(enlace_[a-z_]+)` \|", guide, re.M))
    assert listed == defined

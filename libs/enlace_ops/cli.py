"""enlace-ops: the operator's command line (dead letters, redrive, replay, outbox status, data-key rotation).

Kafka and topic prefix come from ENLACE_KAFKA_BOOTSTRAP_SERVERS and ENLACE_KAFKA_TOPIC_PREFIX, like
the services, and so does the broker's security (ENLACE_KAFKA_SECURITY_PROTOCOL, ENLACE_KAFKA_SASL_*,
ENLACE_KAFKA_SSL_CAFILE; on a cluster as the enlace-ops principal); a service's database from its own settings
(e.g. INTAKE_DATABASE_URL).
"""

import asyncio
import importlib
import json
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from enlace_ops import operations as ops
from enlace_platform.crypto import CorruptValue, load_key_encryption_key
from enlace_platform.runtime import ServiceRuntime
from enlace_platform.settings import ServiceSettings
from enlace_platform.timeutil import as_utc

app = typer.Typer(help="Operate Enlace: dead letters, redrive, replay and the outbox.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics (<topic>.dlq).", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _console() -> Console:
    return Console()  # made per call, so it sees the terminal's current width

SERVICES = ("intake", "referral", "notification")
Bootstrap = Annotated[str, typer.Option(envvar="ENLACE_KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers")]
Prefix = Annotated[str, typer.Option(envvar="ENLACE_KAFKA_TOPIC_PREFIX", help="Topic and group prefix")]
TopicArg = Annotated[str, typer.Argument(help="The source topic, e.g. intake.case (its .dlq is read)")]


@contextmanager
def _progress(description: str):
    """A rich progress bar whose update function takes (done, total)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console(), transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _kafka_options() -> dict:
    """The broker's security from the ENLACE_KAFKA_* environment, as the services read it."""
    try:
        return ServiceSettings().kafka_client_options()
    except (ValueError, OSError) as exc:
        _fail(f"Kafka security settings: {exc}")


def _fail(message: str) -> None:
    _console().print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@dlq_app.command("list")
def dlq_list(topic: TopicArg, bootstrap: Bootstrap = "127.0.0.1:9092", prefix: Prefix = "") -> None:
    """List the dead letters of a topic: where they were, what they are, why they failed."""
    with _progress(f"reading {prefix}{topic}.dlq") as progress:
        try:
            letters = asyncio.run(ops.read_dead_letters(bootstrap, prefix + topic, progress=progress,
                                                        client_options=_kafka_options()))
        except LookupError as exc:
            _fail(str(exc))
    table = Table(title=f"{prefix}{topic}.dlq: {len(letters)} dead letter(s)")
    for column in ("partition", "offset", "event type", "event id", "error", "attempts", "from"):
        table.add_column(column)
    for d in letters:
        h = d.headers
        origin = f"{h.get('dlq_original_topic', '?')}[{h.get('dlq_original_partition', '?')}]@{h.get('dlq_original_offset', '?')}"
        table.add_row(str(d.partition), str(d.offset), d.event_type or "-", d.event_id or "-",
                      f"{h.get('dlq_exception', '?')}: {h.get('dlq_message', '')}", h.get("dlq_attempts", "?"), origin)
    _console().print(table)


@dlq_app.command("show")
def dlq_show(topic: TopicArg, offset: int, partition: Annotated[int, typer.Option()] = 0,
             bootstrap: Bootstrap = "127.0.0.1:9092", prefix: Prefix = "") -> None:
    """Print one dead letter: every header and the payload."""
    letters = asyncio.run(ops.read_dead_letters(bootstrap, prefix + topic, client_options=_kafka_options()))
    found = [d for d in letters if d.partition == partition and d.offset == offset]
    if not found:
        _fail(f"no dead letter at partition {partition} offset {offset}")
    letter = found[0]
    try:
        payload = json.loads(letter.value)
    except ValueError:
        payload = letter.value.decode("utf-8", errors="replace")
    _console().print_json(json.dumps({"partition": letter.partition, "offset": letter.offset, "key": letter.key,
                                   "headers": letter.headers, "payload": payload}))


@dlq_app.command("redrive")
def dlq_redrive(
    topic: TopicArg,
    offset: Annotated[list[int] | None, typer.Option(help="Only these offsets (repeatable)")] = None,
    partition: Annotated[int | None, typer.Option(help="Only this partition of the .dlq")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter of the topic")] = False,
    bootstrap: Bootstrap = "127.0.0.1:9092", prefix: Prefix = "",
) -> None:
    """Send dead letters back to their original topic. Safe to repeat: consumers deduplicate by event id."""
    if not offset and not all_:
        _fail("say which: --offset N (repeatable) or --all")
    try:
        with _progress("redriving") as progress:
            sent = asyncio.run(ops.redrive(bootstrap, prefix + topic, partition=partition, offsets=offset,
                                           progress=progress, client_options=_kafka_options()))
    except ops.MisaddressedDeadLetter as refused:
        _fail(str(refused))
    _console().print(f"redrove {len(sent)} dead letter(s) to {prefix}{topic}")


def _service_settings(service: str) -> ServiceSettings:
    if service not in SERVICES:
        _fail(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    config = importlib.import_module(f"{service}.config")
    [settings_class] = [v for k, v in vars(config).items()
                        if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings]
    return settings_class()


def _runtime(service: str) -> ServiceRuntime:
    return importlib.import_module(f"{service}.bootstrap").build_runtime(_service_settings(service))


def _consumer_names(service: str) -> list[str]:
    return [spec.name for spec in _runtime(service).consumers]


@app.command("outbox")
def outbox(service: Annotated[str, typer.Argument(help="intake, referral or notification")],
           database_url: Annotated[str | None, typer.Option(help="Defaults to the service's own setting")] = None) -> None:
    """Show a service's outbox: rows not yet acknowledged by Kafka, the oldest, and the failing ones."""
    url = database_url or _service_settings(service).database_url
    status = asyncio.run(ops.outbox_status(url))
    _console().print(f"[bold]{service}[/bold] outbox: {status.unsent} unsent, oldest {status.oldest_age_s:.1f}s old, "
                  f"{status.retrying} retrying")
    for topic, count in sorted(status.by_topic.items()):
        _console().print(f"  {topic}: {count}")
    now = datetime.now(UTC)
    for event_id, event_type, attempts, error, next_attempt_at in status.last_errors:
        due_in = max(0.0, (as_utc(next_attempt_at) - now).total_seconds()) if next_attempt_at else 0.0
        _console().print(f"  [yellow]{event_type} {event_id}[/yellow] after {attempts} attempt(s): {error}; "
                         f"next attempt in {due_in:.0f}s")


@app.command("replay")
def replay(
    topic: Annotated[str, typer.Argument(help="Topic to replay, e.g. intake.case")],
    service: Annotated[str, typer.Option(help="The service that consumes it")],
    from_offset: Annotated[int, typer.Option(help="First offset to handle again")],
    consumer: Annotated[str | None, typer.Option(help="Consumer name, when the service has several")] = None,
    partition: Annotated[int | None, typer.Option(help="Only this partition")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to follow the service catching up (0: do not wait)")] = 0,
    bootstrap: Bootstrap = "127.0.0.1:9092", prefix: Prefix = "",
) -> None:
    """Rewind a service's consumer group on a topic so it handles the records from an offset again.

    Stop the service first (the broker refuses while the group has members), run this, start the
    service. Events it already handled are skipped by its inbox; only new state is built.
    """
    names = _consumer_names(service)
    if consumer is None:
        if len(names) != 1:
            _fail(f"{service} has consumers {names}; choose one with --consumer")
        consumer = names[0]
    elif consumer not in names:
        _fail(f"{service} has no consumer {consumer!r}; it has {names}")
    group = prefix + consumer
    try:
        targets = asyncio.run(ops.rewind_group(bootstrap, group, prefix + topic, offset=from_offset,
                                               partition=partition, client_options=_kafka_options()))
    except LookupError as exc:
        _fail(str(exc))
    except Exception as exc:  # the broker's refusal while members are active
        _fail(f"could not rewind group {group}: {exc!r}. Is the service still running?")
    for tp, off in sorted(targets.items(), key=lambda item: item[0].partition):
        _console().print(f"group {group}: {tp.topic}[{tp.partition}] now at offset {off}")
    if wait > 0:
        with _progress(f"{group} catching up") as progress:
            position = asyncio.run(ops.wait_caught_up(bootstrap, group, prefix + topic, timeout_s=wait,
                                                      progress=progress, client_options=_kafka_options()))
        _console().print(f"group {group}: {position.lag} record(s) still to handle")


@app.command("rotate-data-key")
def rotate_data_key(
    service: Annotated[str, typer.Argument(help="intake, referral or notification")],
    new_key_file: Annotated[Path, typer.Option(help="The new key-encryption key (base64 of 32 bytes); created, "
                                                    "mode 0600, if it does not exist")],
) -> None:
    """Re-wrap a STOPPED service's data under a new key-encryption key, in one transaction.

    The current key comes from the service's own settings (ENLACE_DATA_KEY or ENLACE_DATA_KEY_FILE). The
    per-person data keys are re-wrapped (sealed values stay as they are), and what the service derives from
    the key follows: intake's search index, notification's signing secrets. Then point the service at the
    new key and start it; keep the old key until then. A rerun after an interruption finishes the job.
    """
    runtime = _runtime(service)
    new_kek = load_key_encryption_key(None, str(new_key_file))

    async def rotate() -> dict[str, int]:
        try:
            return await runtime.rotate_key_encryption_key(new_kek)
        finally:
            await runtime.engine.dispose()

    try:
        changed = asyncio.run(rotate())
    except (ValueError, CorruptValue) as exc:
        _fail(f"{exc}; nothing was changed")
    for step, rows in changed.items():
        _console().print(f"{service}: {step}: {rows} row(s) re-sealed")
    _console().print(f"Now start {service} with ENLACE_DATA_KEY_FILE={new_key_file} (or its content as "
                     "ENLACE_DATA_KEY); keep the old key until it runs.")


if __name__ == "__main__":
    app()

"""/metrics: the outbox backlog and its oldest row's age, and a service's own scrape-time gauges."""

from datetime import UTC, datetime, timedelta

from sqlmodel import select

from enlace_platform.outbox import OutboxMessage, add_event
from enlace_platform.runtime import ServiceRuntime, create_service_app
from enlace_platform.settings import ServiceSettings
from tests.support.harness import free_port, running_app


async def count_cases(metrics, session) -> None:
    metrics.gauge("enlace_test_cases", "Cases by state", ("state",)).labels("open").set(7)


def _runtime(tmp_path) -> ServiceRuntime:
    # Nothing listens on the broker port: the API and /metrics work without Kafka.
    settings = ServiceSettings(service_name="metered", database_url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
                               kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", log_json=False)
    return ServiceRuntime(settings=settings, tables=[], scrape_hooks=[count_cases])


async def test_metrics_show_the_unsent_outbox_rows_the_oldest_age_and_service_gauges(tmp_path):
    runtime = _runtime(tmp_path)
    app = create_service_app(title="t", description="t", runtime=runtime, routers=[])
    async with running_app(app) as client:
        async with runtime.sessions() as session:
            for case in ("c1", "c2", "c3"):
                add_event(session, topic="intake.case", case_id=case, event_type="case.registered.v1",
                          data={"case_id": case}, source="/test")
            await session.commit()
        async with runtime.sessions() as session:
            rows = (await session.exec(select(OutboxMessage).order_by(OutboxMessage.aggregateid))).all()
            rows[0].sent_at = datetime.now(UTC)
            rows[1].created_at = datetime.now(UTC) - timedelta(minutes=5)
            rows[1].attempts = 2  # the relay recorded failed attempts: it backs off
            session.add_all(rows[:2])
            await session.commit()
        response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    registry = runtime.metrics.registry
    assert registry.get_sample_value("enlace_outbox_backlog") == 2
    assert 300 <= registry.get_sample_value("enlace_outbox_oldest_unsent_age_seconds") < 3600
    assert registry.get_sample_value("enlace_outbox_retrying") == 1
    assert registry.get_sample_value("enlace_test_cases", {"state": "open"}) == 7
    assert 'enlace_test_cases{state="open"} 7.0' in response.text
    assert "enlace_outbox_backlog 2.0" in response.text


async def test_request_spans_keep_the_path_but_never_the_query_string(tmp_path, spans):
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/things")
    async def things(name: str) -> dict:
        return {"found": 0}

    runtime = _runtime(tmp_path)
    app = create_service_app(title="t", description="t", runtime=runtime, routers=[router])
    spans.clear()  # other tests' /things spans
    async with running_app(app) as client:
        response = await client.get("/things", params={"name": "María Pérez"})
    assert response.status_code == 200
    [server] = [s for s in spans.get_finished_spans()
                if s.kind.name == "SERVER" and s.attributes.get("http.target") == "/things"]
    attributes = " ".join(str(v) for v in server.attributes.values())
    assert "Mar" not in attributes and "name=" not in attributes
    assert server.attributes["http.url"].endswith("/things")

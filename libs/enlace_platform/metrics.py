"""Prometheus metrics of one service, served at ``/metrics``.

Each runtime has its own registry (several services can share a test process). Counters and
histograms are updated as things happen; backlog, lag and per-state counts are read at scrape time.
Labels carry codes and names of parts only, never personal data.
"""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import case, func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.outbox import OutboxMessage
from enlace_platform.timeutil import age_seconds

if TYPE_CHECKING:
    from enlace_platform.runtime import ServiceRuntime

# Called at scrape time with the service's metrics and a session: sets the gauges it owns.
ScrapeHook = Callable[["ServiceMetrics", AsyncSession], Awaitable[None]]


class ServiceMetrics:
    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.registry = CollectorRegistry(auto_describe=True)
        self.outbox_backlog = Gauge("enlace_outbox_backlog", "Outbox rows not yet acknowledged by Kafka",
                                    registry=self.registry)
        self.outbox_oldest_age = Gauge("enlace_outbox_oldest_unsent_age_seconds",
                                       "Age of the oldest outbox row not yet acknowledged (0 when none)",
                                       registry=self.registry)
        self.outbox_retrying = Gauge("enlace_outbox_retrying",
                                     "Outbox rows not yet acknowledged that recorded a failed attempt (backing off)",
                                     registry=self.registry)
        self.consumer_lag = Gauge("enlace_consumer_lag", "Records behind the partition's high watermark",
                                  ["consumer", "topic", "partition"], registry=self.registry)
        self.handler_seconds = Histogram("enlace_handler_duration_seconds", "Time to handle one event, retries included",
                                         ["consumer", "event_type", "outcome"], registry=self.registry)
        self.dead_letters = Counter("enlace_dlq_messages", "Records sent to a dead-letter topic",
                                    ["consumer", "topic"], registry=self.registry)
        self.consumer_paused_partitions = Gauge(
            "enlace_consumer_paused_partitions", "Partitions paused by a transient fault, their records held to retry",
            ["consumer"], registry=self.registry)
        self.consumer_faults = Counter(
            "enlace_consumer_transient_faults", "Transient faults (database, broker, timeout) that paused a partition",
            ["consumer", "fault"], registry=self.registry)
        self.consumer_skipped = Counter(
            "enlace_consumer_skipped_events", "Published events of a type this consumer does not handle",
            ["consumer", "event_type"], registry=self.registry)
        self._gauges: dict[str, Gauge] = {}

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        """A service's own scrape-time gauge, created once."""
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, documentation, list(labels), registry=self.registry)
        return self._gauges[name]

    async def refresh(self, runtime: "ServiceRuntime", hooks: list[ScrapeHook]) -> None:
        async with runtime.read_sessions() as session:  # a scrape never waits for the write lock
            backlog, oldest, retrying = (await session.exec(
                select(func.count(), func.min(OutboxMessage.created_at),
                       func.coalesce(func.sum(case((OutboxMessage.attempts > 0, 1), else_=0)), 0))
                .where(OutboxMessage.sent_at.is_(None))
            )).one()
            self.outbox_backlog.set(backlog)
            self.outbox_oldest_age.set(age_seconds(oldest))
            self.outbox_retrying.set(retrying)
            for hook in hooks:
                await hook(self, session)
        self.consumer_lag.clear()
        for runner in runtime.runners:
            for (topic, partition), lag in (await runner.lag()).items():
                self.consumer_lag.labels(runner.name, topic, str(partition)).set(lag)

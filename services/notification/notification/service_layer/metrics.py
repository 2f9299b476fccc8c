"""Notification's own gauges on /metrics, read at scrape time: deliveries per channel and status, and how
long the oldest pending one has waited (a stuck receiver or SMTP server shows here first)."""

from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from enlace_platform.metrics import ServiceMetrics
from enlace_platform.timeutil import age_seconds
from notification.adapters.orm import DeliveryRow
from notification.domain.delivery import PENDING, STATUSES
from notification.domain.webhooks import EMAIL, WEBHOOK


async def delivery_gauges(metrics: ServiceMetrics, session: AsyncSession) -> None:
    by_state = metrics.gauge("enlace_notification_deliveries", "Deliveries by channel and status",
                             ("channel", "status"))
    counts = {(c, s): n for c, s, n in (await session.exec(
        select(DeliveryRow.channel, DeliveryRow.status, func.count()).group_by(DeliveryRow.channel,
                                                                              DeliveryRow.status))).all()}
    for channel in (WEBHOOK, EMAIL):
        for status in STATUSES:
            by_state.labels(channel, status).set(counts.get((channel, status), 0))
    oldest = (await session.exec(select(func.min(DeliveryRow.created_at)).where(DeliveryRow.status == PENDING))).one()
    metrics.gauge("enlace_notification_oldest_pending_age_seconds",
                  "Age of the oldest delivery still pending (0 when none)").set(age_seconds(oldest))

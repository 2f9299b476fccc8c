"""The service's idempotent Kafka producer, replaced by a fresh one when it can no longer deliver.

After a broker restart with a batch in flight, aiokafka's idempotent producer can answer every later send
with OutOfOrderSequenceNumber (aio-libs/aiokafka#1017; librdkafka treats the same state as fatal): its
producer id and sequence numbers no longer match the broker's, and it never recovers on its own. The
only remedy is a new producer, with a new producer id. What the old one failed stays in the outbox (or in
the consumer's hands, for a dead letter) and is sent again by the new one; consumers deduplicate on the
CloudEvents id, so a record that did land twice is harmless.
"""

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId

log = logging.getLogger(__name__)

# Errors after which this producer id delivers nothing more.
UNUSABLE_PRODUCER_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


def leaves_producer_unusable(error: BaseException | None) -> bool:
    return isinstance(error, UNUSABLE_PRODUCER_ERRORS)


class RenewableProducer:
    """Has the producer's ``start``, ``send``, ``stop`` and ``client``; :meth:`renew` swaps in a new one."""

    def __init__(self, build: Callable[[], AIOKafkaProducer], *, stop_timeout_s: float = 2.0) -> None:
        self._build = build
        self._producer = build()
        self._stop_timeout_s = stop_timeout_s
        self._renewing = asyncio.Lock()
        self.generation = 0  # how many times it was renewed; a caller renews the generation it saw fail

    @property
    def client(self):
        return self._producer.client

    async def start(self) -> None:
        await self._producer.start()

    async def send(self, topic: str, **kwargs) -> asyncio.Future:
        return await self._producer.send(topic, **kwargs)

    async def stop(self) -> None:
        await self._producer.stop()

    async def renew(self, seen_generation: int, reason: BaseException) -> None:
        """Replace the producer that failed with ``reason``, unless another caller already replaced it."""
        async with self._renewing:
            if self.generation != seen_generation:
                return
            fresh = self._build()
            await fresh.start()  # fails while the broker is away: the caller tries again on its next failure
            old, self._producer = self._producer, fresh
            self.generation += 1
        log.warning("Kafka producer replaced after %s: it could not deliver any more; what it failed is sent "
                    "again", type(reason).__name__)
        asyncio.get_running_loop().create_task(self._retire(old), name="retire-producer")

    async def _retire(self, old: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(old.stop(), timeout=self._stop_timeout_s)
        except Exception as exc:  # it was broken already; nothing of ours depends on it any more
            log.info("the replaced Kafka producer stopped with %s", type(exc).__name__)

import pytest
from aiokafka import AIOKafkaProducer


@pytest.fixture
async def producer(kafka_bootstrap):
    """An idempotent producer on the session's broker, as the services use."""
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await p.start()
    yield p
    await p.stop()

"""Intake's API in-process, on its own database, without a broker; and its users."""

import pytest

from tests.support.intake_support import inm, inm_supervisor, intake_without_broker


@pytest.fixture
async def intake(tmp_path, dev_issuer_dir):
    async with intake_without_broker(tmp_path, dev_issuer_dir) as (client, runtime):
        yield client, runtime


@pytest.fixture
def officer(dev_issuer_dir):
    return inm(dev_issuer_dir)


@pytest.fixture
def supervisor(dev_issuer_dir):
    return inm_supervisor(dev_issuer_dir)

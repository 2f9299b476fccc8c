"""The cluster tests: one three-node Kafka cluster per session (tests/support/cluster.py), secured as in
production (SASL_SSL, SCRAM-SHA-512, the standard authorizer). Everything here carries the ``cluster`` marker
(``pytest -m "not cluster"`` leaves it out); if the cluster cannot start, the tests fail, never skip."""

import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import ClusterError, KafkaCluster

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory):
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"))
    try:
        cluster.start()
    except (ClusterError, OSError, subprocess.TimeoutExpired) as exc:
        try:
            cluster.stop()
        finally:
            pytest.fail(f"could not start the three-node Kafka cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()

"""The documented Node.js receiver (examples/webhook-receiver) verifies what Standard Webhooks signs."""

import base64
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.support.harness import REPO, free_port

RECEIVER = REPO / "examples" / "webhook-receiver" / "receiver.mjs"


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def node_receiver():
    node = shutil.which("node")
    assert node, "node is needed for the integrator example test"
    old, new = _secret(), _secret()
    port = free_port()
    process = subprocess.Popen([node, str(RECEIVER)], env={**os.environ, "PORT": str(port),
                                                            "ENLACE_WEBHOOK_SECRET": f"{old} {new}"},
                               stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(process.stdout.readline()) == {"listening": port}
        yield f"http://127.0.0.1:{port}/", old, new, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def _post(url: str, secret: str, webhook_id: str, body: dict, *, tamper: bool = False,
          at: datetime | None = None) -> int:
    raw = json.dumps(body)
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(webhook_id, at, raw)
    sent = raw.replace("requested", "accepted") if tamper else raw
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
               "webhook-signature": signature, "content-type": "application/json"}
    return httpx.post(url, content=sent, headers=headers, timeout=5).status_code


def test_node_receiver_accepts_valid_rejects_forged_and_stale_and_spots_duplicates(node_receiver):
    url, old, new, process = node_receiver
    body = {"type": "referral.requested.v1", "referral_id": "r-1"}
    assert _post(url, old, "msg_1", body) == 204            # signed with the old secret, during rotation
    assert _post(url, new, "msg_2", body) == 204            # signed with the new one
    assert _post(url, new, "msg_2", body) == 204            # a redelivery: accepted, flagged duplicate
    assert _post(url, _secret(), "msg_3", body) == 401      # someone else's key
    assert _post(url, new, "msg_4", body, tamper=True) == 401
    assert _post(url, new, "msg_5", body, at=datetime.now(UTC) - timedelta(minutes=10)) == 401
    process.terminate()
    lines = [json.loads(line) for line in process.stdout.read().splitlines()]
    accepted = [(line["webhook_id"], line["duplicate"]) for line in lines if line.get("accepted")]
    assert accepted == [("msg_1", False), ("msg_2", False), ("msg_2", True)]
    problems = [line["problem"] for line in lines if line.get("accepted") is False]
    assert problems == ["no valid signature", "no valid signature", "timestamp outside tolerance"]

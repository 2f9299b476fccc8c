"""The receiving agency's webhook endpoint, in its own process so that the load client never delays its clock.

    python -m bench.e2e.receiver --port 18099

A bare ASGI app under uvicorn (uvloop, httptools). Each webhook is answered 204 at once and recorded with
its arrival time (wall clock, comparable with the client's on the same machine), webhook-id, event type,
case and referral; the signature is checked with the Standard Webhooks library once the secret is known.
The benchmark reads what arrived from ``GET /_bench/arrivals?since=N`` and gives the secret with
``POST /_bench/secret``. Nothing is deduplicated here: repeats are what the benchmark counts.
"""

import argparse
import json
import time
from urllib.parse import parse_qs

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Receiver:
    def __init__(self) -> None:
        self.arrivals: list[list] = []  # [arrived_at, webhook_id, type, case_id, referral_id, signature_ok]
        self.verifier: Webhook | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if method == "POST" and path.startswith("/hooks/"):
            await self._hook(scope, body, send)
        elif method == "GET" and path == "/_bench/arrivals":
            since = int(parse_qs(scope["query_string"].decode()).get("since", ["0"])[0])
            await _answer(send, 200, json.dumps({"items": self.arrivals[since:]}).encode())
        elif method == "POST" and path == "/_bench/secret":
            self.verifier = Webhook(json.loads(body)["secret"])
            await _answer(send, 204)
        else:
            await _answer(send, 404)

    async def _hook(self, scope, body: bytes, send) -> None:
        arrived = time.time()
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            payload = json.loads(body)
            data = payload.get("data") or {}
            kind, case_id, referral_id = payload.get("type"), data.get("case_id"), data.get("referral_id")
        except (ValueError, AttributeError):
            kind = case_id = referral_id = None
        signature_ok = None
        if self.verifier is not None:
            try:
                self.verifier.verify(body, headers)
                signature_ok = True
            except WebhookVerificationError:
                signature_ok = False
        self.arrivals.append([arrived, headers.get("webhook-id"), kind, case_id, referral_id, signature_ok])
        await _answer(send, 204)


async def _answer(send, status: int, body: bytes = b"") -> None:
    headers = [(b"content-type", b"application/json")] if body else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(Receiver(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

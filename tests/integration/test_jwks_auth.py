"""Production authentication end to end: the real notification service verifies tokens against an OIDC
JWKS served over HTTP on 127.0.0.1 from a key set generated here (RS256 and ES256), through a key
rotation, with its audience and issuer checked. No broker: the API runs without Kafka."""

import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from enlace_platform.dev_issuer import mint
from notification.config import NotificationSettings
from notification.entrypoints.app import create_app
from tests.support.harness import eventually, fast_settings, free_port, running_app
from tests.unit.platform.test_auth import JwksServer

ISSUER = "https://idp.enlace.test/realms/enlace"
AUDIENCE = "enlace-api"
HOOK = "https://hooks.pfpnna.example/enlace"


class IdentityProvider:
    """A key set generated here, published by a JWKS server, and the tokens it signs."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[object, str]] = {}  # kid -> (private key, alg)
        self.server = JwksServer({"keys": []})

    def add(self, kid: str, alg: str) -> None:
        private = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256"
                   else ec.generate_private_key(ec.SECP256R1()))
        self.keys[kid] = (private, alg)
        self._publish()

    def remove(self, kid: str) -> None:
        del self.keys[kid]
        self._publish()

    def _publish(self) -> None:
        jwks = []
        for kid, (private, alg) in self.keys.items():
            algorithm = RSAAlgorithm if alg == "RS256" else ECAlgorithm
            jwks.append(algorithm.to_jwk(private.public_key(), as_dict=True) | {"kid": kid, "use": "sig", "alg": alg})
        self.server.jwks = {"keys": jwks}

    def token(self, kid: str, *, roles=("supervisor",), signed_by: tuple[object, str] | None = None,
              **claims) -> dict[str, str]:
        """Headers with a token naming ``kid``, signed by that key, or by ``signed_by`` = (private key, alg)."""
        key, alg = signed_by or self.keys[kid]
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return _headers(jwt.encode(_claims(roles) | claims, pem, algorithm=alg, headers={"kid": kid}))


def _claims(roles=("supervisor",)) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": f"mx-pfpnna-{'-'.join(roles)}", "iat": now, "exp": now + 300,
            "agency": {"id": "MX-PFPNNA", "type": "child_protection", "jurisdiction": "MX"}, "roles": list(roles)}


def _headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hand_signed(header: dict, hmac_secret: bytes | None) -> dict[str, str]:
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(_claims()).encode())}"
    signature = hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest() if hmac_secret else b""
    return _headers(f"{signing_input}.{_b64url(signature)}")


@pytest.fixture
def idp(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    provider = IdentityProvider()
    with provider.server:
        yield provider


def _app(tmp_path, dev_issuer_dir, idp: IdentityProvider, **cache):
    settings = fast_settings(NotificationSettings, tmp_path=tmp_path, bootstrap=f"127.0.0.1:{free_port()}", prefix="jwks.",
                             dev_issuer_dir=dev_issuer_dir, auth_jwks_url=idp.server.url, auth_issuer=ISSUER,
                             auth_audience=AUDIENCE, **cache)
    return create_app(settings)


async def test_the_service_accepts_rs256_and_es256_tokens_through_a_key_rotation(tmp_path, dev_issuer_dir, idp):
    idp.add("2026-rsa", "RS256")
    idp.add("2026-ec", "ES256")
    async with running_app(_app(tmp_path, dev_issuer_dir, idp, auth_jwks_cache_s=1.0,
                                auth_jwks_refetch_interval_s=0.2)) as api:
        created = await api.post("/subscriptions", headers=idp.token("2026-rsa"),
                                 json={"url": HOOK, "event_types": ["referral.*"]})
        assert created.status_code == 201, created.text
        sub_id = created.json()["id"]
        listed = await api.get("/subscriptions", headers=idp.token("2026-ec"))
        assert [s["id"] for s in listed.json()] == [sub_id], "an ES256 token of the same agency sees it"
        caseworker = await api.get("/subscriptions", headers=idp.token("2026-ec", roles=("caseworker",)))
        assert caseworker.status_code == 403, "the IdP's roles claim decides the permission"

        # Rotation: the IdP adds a key and signs with it; the running service accepts it, no restart.
        idp.add("2027-rsa", "RS256")

        async def new_key_accepted():
            return (await api.get(f"/subscriptions/{sub_id}", headers=idp.token("2027-rsa"))).status_code == 200

        await eventually(new_key_accepted, what="a token signed with the new key")
        # The IdP retires the old RSA key: once the service's cached set expires, its tokens are refused.
        retired, retired_key = idp.token("2026-rsa"), idp.keys["2026-rsa"]
        idp.remove("2026-rsa")

        async def retired_key_refused():
            return (await api.get("/subscriptions", headers=retired)).status_code == 401

        await eventually(retired_key_refused, what="the retired key's refusal")
        refused = await api.get("/subscriptions", headers=idp.token("2026-rsa", signed_by=retired_key))
        assert refused.status_code == 401, "a fresh token signed with the retired key too"
        assert refused.headers["content-type"] == "application/problem+json"
        assert (await api.get("/subscriptions", headers=idp.token("2027-rsa"))).status_code == 200
        assert (await api.get("/subscriptions", headers=idp.token("2026-ec"))).status_code == 200

        # The auditor's token comes from the IdP too; the log names the IdP's subject for each request.
        audit = await api.get("/audit", headers=idp.token("2026-ec", roles=("auditor",)),
                              params={"object_id": sub_id})
        assert audit.status_code == 200, audit.text
        assert {e["user_id"] for e in audit.json()["items"]} >= {"mx-pfpnna-supervisor"}


async def test_audience_issuer_algorithm_and_development_tokens_are_refused(tmp_path, dev_issuer_dir, idp):
    idp.add("rsa-1", "RS256")
    idp.add("ec-1", "ES256")
    rsa_public_pem = idp.keys["rsa-1"][0].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    async with running_app(_app(tmp_path, dev_issuer_dir, idp)) as api:
        assert (await api.get("/deliveries", headers=idp.token("rsa-1"))).status_code == 200
        refused = {
            "another audience": idp.token("rsa-1", aud="some-other-api"),
            "another issuer": idp.token("rsa-1", iss="https://evil.example"),
            "expired": idp.token("ec-1", iat=int(time.time()) - 3600, exp=int(time.time()) - 60),
            # The development issuer's key file exists, but a JWKS-configured service ignores it.
            "a development token": {"authorization": "Bearer " + mint(
                (dev_issuer_dir / "private.pem").read_bytes(), agency_id="MX-PFPNNA", agency_type="child_protection",
                jurisdiction="MX", roles=["supervisor"], issuer=ISSUER, audience=AUDIENCE, kid="ec-1")},
            "ES256 under the RSA key's kid": idp.token("rsa-1", signed_by=idp.keys["ec-1"]),
            "RS256 under the EC key's kid": idp.token("ec-1", signed_by=idp.keys["rsa-1"]),
            "HS256 keyed with the RSA public key": _hand_signed({"alg": "HS256", "kid": "rsa-1"}, rsa_public_pem),
            "alg none": _hand_signed({"alg": "none", "kid": "rsa-1"}, None),
        }
        for what, headers in refused.items():
            r = await api.get("/deliveries", headers=headers)
            assert r.status_code == 401, (what, r.text)
            assert r.headers["content-type"] == "application/problem+json", what


async def test_random_kids_do_not_make_the_service_refetch_the_key_set(tmp_path, dev_issuer_dir, idp):
    idp.add("rsa-1", "RS256")
    async with running_app(_app(tmp_path, dev_issuer_dir, idp, auth_jwks_refetch_interval_s=3600)) as api:
        assert (await api.get("/deliveries", headers=idp.token("rsa-1"))).status_code == 200
        fetched = idp.server.requests
        assert fetched == 1
        for _ in range(40):
            r = await api.get("/deliveries", headers=idp.token(uuid.uuid4().hex, signed_by=idp.keys["rsa-1"]))
            assert r.status_code == 401, r.text
        assert idp.server.requests == fetched, "unknown kids within the refetch interval fetch nothing"
        assert (await api.get("/deliveries", headers=idp.token("rsa-1"))).status_code == 200

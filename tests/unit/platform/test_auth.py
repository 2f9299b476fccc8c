"""Bearer JWT verification: the development key file and an OIDC-style JWKS URL."""

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from enlace_platform.auth import CurrentPrincipal, TokenVerifier
from enlace_platform.dev_issuer import ensure_keypair, mint
from enlace_platform.problems import PROBLEM_JSON, install_problem_handlers
from enlace_platform.settings import ServiceSettings

ISSUER = "enlace-dev-issuer"
AUDIENCE = "enlace"
AGENCY = dict(agency_id="MX-DIF", agency_type="child-protection", jurisdiction="MX-CHP",
              roles=["caseworker", "supervisor"])


def _settings(**overrides) -> ServiceSettings:
    fields = dict(auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_jwks_url=None,
                  auth_dev_public_key_path="/nonexistent/public.pem")
    fields.update(overrides)
    return ServiceSettings(**fields)


def _app(settings: ServiceSettings) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.state.token_verifier = TokenVerifier(settings)

    @app.get("/me")
    async def me(principal: CurrentPrincipal):
        return {"subject": principal.subject, "agency_id": principal.agency_id,
                "agency_type": principal.agency_type, "jurisdiction": principal.jurisdiction,
                "roles": list(principal.roles)}

    return app


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _assert_unauthorized(response) -> dict:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["status"] == 401
    assert body["instance"] == "/me"
    return body


# --- development key file ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_keys(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("issuer")
    private = ensure_keypair(key_dir)
    return private.read_bytes(), key_dir / "public.pem"


@pytest.fixture(scope="module")
def dev_client(dev_keys):
    _, public_path = dev_keys
    with TestClient(_app(_settings(auth_dev_public_key_path=str(public_path)))) as client:
        yield client


def _get(client, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get("/me", headers=headers)


def test_ensure_keypair_is_idempotent_and_keeps_the_private_key_private(tmp_path):
    private = ensure_keypair(tmp_path / "k")
    first = private.read_bytes()
    assert ensure_keypair(tmp_path / "k").read_bytes() == first  # not regenerated
    assert private.stat().st_mode & 0o077 == 0
    public = serialization.load_pem_public_key((tmp_path / "k" / "public.pem").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)


def test_valid_token_yields_the_principal(dev_client, dev_keys):
    private, _ = dev_keys
    token = mint(private, subject="ana.lopez", **AGENCY)
    response = _get(dev_client, token)
    assert response.status_code == 200, response.text
    assert response.json() == {"subject": "ana.lopez", "agency_id": "MX-DIF", "agency_type": "child-protection",
                               "jurisdiction": "MX-CHP", "roles": ["caseworker", "supervisor"]}


def test_default_subject_is_derived_from_the_agency(dev_client, dev_keys):
    private, _ = dev_keys
    token = mint(private, agency_id="MX-COMAR", agency_type="asylum", jurisdiction="MX", roles=[])
    response = _get(dev_client, token)
    assert response.status_code == 200, response.text
    assert response.json()["subject"] == "mx-comar-user"
    assert response.json()["roles"] == []


def test_missing_token_is_401_with_www_authenticate(dev_client):
    response = _get(dev_client, None)
    body = _assert_unauthorized(response)
    assert "Bearer token is required" in body["detail"]
    # RFC 6750 §3.1: no error code when no token was sent at all.
    assert response.headers["www-authenticate"] == "Bearer"


def test_non_bearer_scheme_is_401(dev_client, dev_keys):
    private, _ = dev_keys
    token = mint(private, **AGENCY)
    _assert_unauthorized(dev_client.get("/me", headers={"Authorization": f"Basic {token}"}))


def test_expired_token_is_401(dev_client, dev_keys):
    private, _ = dev_keys
    token = mint(private, now=time.time() - 3600, ttl_s=60, **AGENCY)
    response = _get(dev_client, token)
    body = _assert_unauthorized(response)
    assert "expired" in body["detail"].lower()
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_token_signed_by_another_key_is_401(dev_client, tmp_path):
    other = ensure_keypair(tmp_path / "other").read_bytes()
    body = _assert_unauthorized(_get(dev_client, mint(other, **AGENCY)))
    assert "signature" in body["detail"].lower()


def test_wrong_audience_is_401(dev_client, dev_keys):
    private, _ = dev_keys
    body = _assert_unauthorized(_get(dev_client, mint(private, audience="someone-else", **AGENCY)))
    assert "audience" in body["detail"].lower()


def test_wrong_issuer_is_401(dev_client, dev_keys):
    private, _ = dev_keys
    body = _assert_unauthorized(_get(dev_client, mint(private, issuer="https://evil.example", **AGENCY)))
    assert "issuer" in body["detail"].lower()


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30.", ""])
def test_garbage_token_is_401(dev_client, garbage):
    _assert_unauthorized(_get(dev_client, garbage))


def test_token_without_agency_claim_is_401(dev_client, dev_keys):
    private, _ = dev_keys
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now, "exp": now + 60},
                       private, algorithm="ES256")
    _assert_unauthorized(_get(dev_client, token))


def test_token_without_exp_is_401(dev_client, dev_keys):
    private, _ = dev_keys
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now,
                        "agency": {"id": "A", "type": "t", "jurisdiction": "J"}}, private, algorithm="ES256")
    _assert_unauthorized(_get(dev_client, token))


def test_unsigned_alg_none_token_is_401(dev_client):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now, "exp": now + 60,
              "agency": {"id": "A", "type": "t", "jurisdiction": "J"}}
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{header}.{_b64url(json.dumps(claims).encode())}."
    _assert_unauthorized(_get(dev_client, token))


def test_hs256_signed_with_the_public_key_is_401(dev_client, dev_keys):
    # Algorithm confusion: an attacker knows the public key and uses it as an HMAC secret.
    _, public_path = dev_keys
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now, "exp": now + 60,
              "agency": {"id": "A", "type": "t", "jurisdiction": "J"}}
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64url(json.dumps(claims).encode())}"
    signature = hmac.new(public_path.read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    _assert_unauthorized(_get(dev_client, f"{signing_input}.{_b64url(signature)}"))


def test_missing_dev_key_file_rejects_instead_of_crashing(dev_keys, tmp_path):
    private, _ = dev_keys
    settings = _settings(auth_dev_public_key_path=str(tmp_path / "absent.pem"))
    with TestClient(_app(settings)) as client:
        body = _assert_unauthorized(_get(client, mint(private, **AGENCY)))
    assert "make token" in body["detail"]


# --- JWKS URL (production mode) ------------------------------------------------------------------


class _JwksServer:
    def __init__(self, jwks: dict) -> None:
        payload = json.dumps(jwks).encode()
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def idp_keys():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec_key, rsa_key


@pytest.fixture(scope="module")
def jwks_client(idp_keys):
    ec_key, rsa_key = idp_keys
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ec-1", "use": "sig", "alg": "ES256"}
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "rsa-1", "use": "sig",
                                                                         "alg": "RS256"}
    mp = pytest.MonkeyPatch()
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        mp.delenv(name, raising=False)
    with _JwksServer({"keys": [ec_jwk, rsa_jwk]}) as server:
        with TestClient(_app(_settings(auth_jwks_url=server.url))) as client:
            client.jwks_server = server
            yield client
    mp.undo()


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _rs256(rsa_key, kid: str | None, **claim_overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "rs-user", "iat": now, "exp": now + 300,
              "agency": {"id": "GT-PGN", "type": "child-protection", "jurisdiction": "GT"},
              "roles": ["caseworker"]} | claim_overrides
    return jwt.encode(claims, _pem(rsa_key), algorithm="RS256", headers={"kid": kid} if kid else None)


def test_jwks_es256_token_with_kid_verifies(jwks_client, idp_keys):
    ec_key, _ = idp_keys
    token = mint(_pem(ec_key), kid="ec-1", **AGENCY)
    response = _get(jwks_client, token)
    assert response.status_code == 200, response.text
    assert response.json()["agency_id"] == "MX-DIF"
    assert response.json()["roles"] == ["caseworker", "supervisor"]
    assert jwks_client.jwks_server.requests >= 1  # the key really came from the JWKS URL


def test_jwks_rs256_token_with_kid_verifies(jwks_client, idp_keys):
    _, rsa_key = idp_keys
    response = _get(jwks_client, _rs256(rsa_key, "rsa-1"))
    assert response.status_code == 200, response.text
    assert response.json() == {"subject": "rs-user", "agency_id": "GT-PGN", "agency_type": "child-protection",
                               "jurisdiction": "GT", "roles": ["caseworker"]}


def test_jwks_unknown_kid_is_401(jwks_client, idp_keys):
    ec_key, _ = idp_keys
    body = _assert_unauthorized(_get(jwks_client, mint(_pem(ec_key), kid="rotated-away", **AGENCY)))
    assert "rotated-away" in body["detail"]


def test_jwks_token_without_kid_is_401(jwks_client, idp_keys):
    _, rsa_key = idp_keys
    _assert_unauthorized(_get(jwks_client, _rs256(rsa_key, None)))


def test_jwks_kid_pointing_at_another_key_is_401(jwks_client, idp_keys):
    ec_key, _ = idp_keys
    # Signed with the EC key but claims to be the RSA key.
    _assert_unauthorized(_get(jwks_client, mint(_pem(ec_key), kid="rsa-1", **AGENCY)))


def test_jwks_known_kid_but_foreign_signature_is_401(jwks_client):
    stranger = ec.generate_private_key(ec.SECP256R1())
    body = _assert_unauthorized(_get(jwks_client, mint(_pem(stranger), kid="ec-1", **AGENCY)))
    assert "signature" in body["detail"].lower()


def test_jwks_still_checks_audience_and_expiry(jwks_client, idp_keys):
    _, rsa_key = idp_keys
    _assert_unauthorized(_get(jwks_client, _rs256(rsa_key, "rsa-1", aud="other")))
    past = int(time.time()) - 3600
    _assert_unauthorized(_get(jwks_client, _rs256(rsa_key, "rsa-1", iat=past, exp=past + 60)))


def test_jwks_mode_ignores_the_dev_key_file(dev_keys):
    # A service configured for an IdP must not accept development tokens, even if the file exists.
    private, public_path = dev_keys
    with _JwksServer({"keys": []}) as server:
        settings = _settings(auth_jwks_url=server.url, auth_dev_public_key_path=str(public_path))
        with TestClient(_app(settings)) as client:
            _assert_unauthorized(_get(client, mint(private, kid="dev", **AGENCY)))


def test_unreachable_jwks_url_is_503_not_a_blame_on_the_token(idp_keys):
    ec_key, _ = idp_keys
    server = _JwksServer({"keys": []})  # bound, then closed without serving: connection refused
    url = server.url
    server.httpd.server_close()
    with TestClient(_app(_settings(auth_jwks_url=url))) as client:
        response = _get(client, mint(_pem(ec_key), kid="ec-1", **AGENCY))
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    assert url not in response.text, "internal URLs stay out of the answer"

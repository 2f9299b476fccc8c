"""Bearer JWT verification: the development key file and an OIDC-style JWKS URL."""

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from enlace_platform.agencies import Agency, AgencyRegistry
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


# The directory: what each agency is, whatever its tokens claim.
DIRECTORY = AgencyRegistry([
    Agency(id="MX-DIF", type="child-protection", jurisdiction="MX-CHP", enforcement=False),
    Agency(id="MX-COMAR", type="asylum_office", jurisdiction="MX", enforcement=False),
    Agency(id="MX-INM", type="migration_authority", jurisdiction="MX", enforcement=True),
    Agency(id="GT-PGN", type="child-protection", jurisdiction="GT", enforcement=False),
])


def _app(settings: ServiceSettings, clock=time.monotonic, agencies: AgencyRegistry = DIRECTORY) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.state.token_verifier = TokenVerifier(settings, agencies=agencies, clock=clock)

    @app.get("/me")
    async def me(principal: CurrentPrincipal):
        identity = {"subject": principal.subject, "agency_id": principal.agency_id,
                    "agency_type": principal.agency_type, "jurisdiction": principal.jurisdiction,
                    "roles": list(principal.roles)}
        if principal.enforcement:
            identity["enforcement"] = True
        return identity

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


# --- the directory decides who the agency is; configuration decides which issuer speaks for it -----------------

def test_the_directory_not_the_token_says_what_the_agency_is(dev_client, dev_keys):
    private, _ = dev_keys
    token = mint(private, agency_id="MX-INM", agency_type="coordinator", jurisdiction="GT", roles=["coordinator"])
    response = _get(dev_client, token)
    assert response.status_code == 200, response.text
    assert response.json() == {"subject": "mx-inm-user", "agency_id": "MX-INM", "agency_type": "migration_authority",
                               "jurisdiction": "MX", "roles": ["coordinator"], "enforcement": True}


def test_a_token_for_an_agency_the_directory_does_not_know_is_401(dev_client, dev_keys):
    private, _ = dev_keys
    token = mint(private, agency_id="MX-NOWHERE", agency_type="coordinator", jurisdiction="MX", roles=["coordinator"])
    body = _assert_unauthorized(_get(dev_client, token))
    assert "directory" in body["detail"]


def test_a_change_of_the_directory_applies_to_the_next_request(dev_keys):
    private, public_path = dev_keys
    directory = AgencyRegistry()
    token = mint(private, **AGENCY)
    with TestClient(_app(_settings(auth_dev_public_key_path=str(public_path)), agencies=directory)) as client:
        _assert_unauthorized(_get(client, token))
        directory.put(Agency(id="MX-DIF", type="health", jurisdiction="MX", enforcement=False))
        assert _get(client, token).json()["agency_type"] == "health"
        directory.remove("MX-DIF")
        _assert_unauthorized(_get(client, token))


def test_an_issuer_speaks_only_for_the_agencies_it_is_trusted_for(dev_keys, tmp_path):
    """Mexico's identity provider for MX, Guatemala's for GT, and MX-DIF has one of its own: each token verifies
    with its issuer's key, and is refused for an agency another issuer speaks for, signature valid or not."""
    mx_private, mx_public = dev_keys
    gt_private = ensure_keypair(tmp_path / "gt").read_bytes()
    dif_private = ensure_keypair(tmp_path / "dif").read_bytes()
    trusted = {"MX": {"issuer": "https://idp.mx", "public_key_path": str(mx_public)},
               "GT": {"issuer": "https://idp.gt", "public_key_path": str(tmp_path / "gt" / "public.pem")},
               "MX-DIF": {"issuer": "https://idp.dif", "public_key_path": str(tmp_path / "dif" / "public.pem")}}
    comar = dict(agency_id="MX-COMAR", agency_type="asylum_office", jurisdiction="MX", roles=["caseworker"])
    pgn = dict(agency_id="GT-PGN", agency_type="child_protection", jurisdiction="GT", roles=["caseworker"])
    with TestClient(_app(_settings(auth_trusted_issuers=trusted))) as client:
        assert _get(client, mint(mx_private, issuer="https://idp.mx", **comar)).status_code == 200
        assert _get(client, mint(gt_private, issuer="https://idp.gt", **pgn)).status_code == 200
        assert _get(client, mint(dif_private, issuer="https://idp.dif", **AGENCY)).status_code == 200
        # Validly signed by its own issuer, but that issuer does not speak for the agency named.
        _assert_unauthorized(_get(client, mint(gt_private, issuer="https://idp.gt", **comar)))
        _assert_unauthorized(_get(client, mint(mx_private, issuer="https://idp.mx", **AGENCY)))
        # The development issuer is not trusted at all once issuers are configured.
        _assert_unauthorized(_get(client, mint(mx_private, **comar)))
        # A trusted issuer's name with another issuer's key.
        _assert_unauthorized(_get(client, mint(gt_private, issuer="https://idp.mx", **comar)))


def test_an_issuer_with_two_key_sources_is_a_configuration_error(tmp_path):
    trusted = {"MX": {"issuer": "https://idp.mx", "public_key_path": "/a.pem"},
               "GT": {"issuer": "https://idp.mx", "jwks_url": "https://idp.mx/jwks"}}
    with pytest.raises(ValueError, match="two key sources"):
        TokenVerifier(_settings(auth_trusted_issuers=trusted), agencies=DIRECTORY)


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


class JwksServer:
    """An IdP's JWKS endpoint on 127.0.0.1: the key set can change while it runs (rotation), it can answer
    500 (``failing``), and it counts the fetches."""

    def __init__(self, jwks: dict) -> None:
        self.jwks = jwks
        self.failing = False
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                if self.path != "/.well-known/jwks.json" or outer.failing:
                    self.send_error(404 if not outer.failing else 500)
                    return
                payload = json.dumps(outer.jwks).encode()
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


@pytest.fixture(scope="module", autouse=True)
def _no_proxy_for_the_local_idp():
    mp = pytest.MonkeyPatch()
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        mp.delenv(name, raising=False)
    yield
    mp.undo()


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
    with JwksServer({"keys": [ec_jwk, rsa_jwk]}) as server:
        with TestClient(_app(_settings(auth_jwks_url=server.url))) as client:
            client.jwks_server = server
            yield client


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
    with JwksServer({"keys": []}) as server:
        settings = _settings(auth_jwks_url=server.url, auth_dev_public_key_path=str(public_path))
        with TestClient(_app(settings)) as client:
            _assert_unauthorized(_get(client, mint(private, kid="dev", **AGENCY)))


def test_unreachable_jwks_url_is_503_not_a_blame_on_the_token(idp_keys):
    ec_key, _ = idp_keys
    server = JwksServer({"keys": []})  # bound, then closed without serving: connection refused
    url = server.url
    server.httpd.server_close()
    with TestClient(_app(_settings(auth_jwks_url=url))) as client:
        response = _get(client, mint(_pem(ec_key), kid="ec-1", **AGENCY))
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    assert url not in response.text, "internal URLs stay out of the answer"


def test_jwks_issuer_is_checked(jwks_client, idp_keys):
    _, rsa_key = idp_keys
    body = _assert_unauthorized(_get(jwks_client, _rs256(rsa_key, "rsa-1", iss="https://evil.example")))
    assert "issuer" in body["detail"].lower()


def test_jwks_rs256_token_claiming_the_ec_key_is_401(jwks_client, idp_keys):
    _, rsa_key = idp_keys
    _assert_unauthorized(_get(jwks_client, _rs256(rsa_key, "ec-1")))


def test_jwks_es256_header_on_the_rsa_kid_is_refused_for_the_algorithm(jwks_client, idp_keys):
    # The kid names an RSA key: only RS256 may verify with it, whatever the header says.
    ec_key, _ = idp_keys
    body = _assert_unauthorized(_get(jwks_client, mint(_pem(ec_key), kid="rsa-1", **AGENCY)))
    assert "algorithm" in body["detail"].lower()


def _claims() -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now, "exp": now + 60,
            "agency": {"id": "A", "type": "t", "jurisdiction": "J"}, "roles": ["supervisor"]}


def _hand_signed(header: dict, secret: bytes | None) -> str:
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(_claims()).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret is not None else b""
    return f"{signing_input}.{_b64url(signature)}"


def test_jwks_hs256_signed_with_the_published_public_key_is_401(jwks_client, idp_keys):
    # Algorithm confusion: the public key (as PEM, and as the JWK JSON the IdP publishes) used as an HMAC secret.
    _, rsa_key = idp_keys
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk_json = RSAAlgorithm.to_jwk(rsa_key.public_key()).encode()
    for secret in (pem, jwk_json):
        _assert_unauthorized(_get(jwks_client, _hand_signed({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, secret)))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_jwks_unsigned_token_is_401(jwks_client, alg):
    _assert_unauthorized(_get(jwks_client, _hand_signed({"alg": alg, "typ": "JWT", "kid": "rsa-1"}, None)))


def test_jwks_symmetric_or_encryption_keys_in_the_set_verify_nothing():
    # A set that (wrongly) publishes an HMAC secret, or a key for encryption: neither may verify a token.
    secret = os.urandom(32)
    enc_key = ec.generate_private_key(ec.SECP256R1())
    keys = [{"kty": "oct", "k": _b64url(secret), "kid": "sym", "alg": "HS256"},
            ECAlgorithm.to_jwk(enc_key.public_key(), as_dict=True) | {"kid": "enc-1", "use": "enc"}]
    with JwksServer({"keys": keys}) as server, TestClient(_app(_settings(auth_jwks_url=server.url))) as client:
        _assert_unauthorized(_get(client, _hand_signed({"alg": "HS256", "typ": "JWT", "kid": "sym"}, secret)))
        _assert_unauthorized(_get(client, mint(_pem(enc_key), kid="enc-1", **AGENCY)))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the attacker's side signing
def test_jwks_rsa_key_shorter_than_2048_bits_is_refused():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = _jwk(weak, "weak", "RS256")
    with JwksServer({"keys": [jwk]}) as server, TestClient(_app(_settings(auth_jwks_url=server.url))) as client:
        _assert_unauthorized(_get(client, _rs256(weak, "weak")))


# --- rotation, caching and refetch limits (a fake clock drives the cache; the IdP is real HTTP) ------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _jwk(private_key, kid: str, alg: str) -> dict:
    algorithm = RSAAlgorithm if alg == "RS256" else ECAlgorithm
    return algorithm.to_jwk(private_key.public_key(), as_dict=True) | {"kid": kid, "use": "sig", "alg": alg}


CACHE_S, REFETCH_S = 300.0, 10.0


@pytest.fixture
def idp():
    """A rotating IdP: its JWKS server, a fake clock, and a client of an app that verifies against it."""
    clock = _Clock()
    with JwksServer({"keys": []}) as server:
        settings = _settings(auth_jwks_url=server.url, auth_jwks_cache_s=CACHE_S,
                             auth_jwks_refetch_interval_s=REFETCH_S)
        with TestClient(_app(settings, clock)) as client:
            yield server, clock, client


def test_jwks_rotation_new_key_verifies_without_restart_and_the_removed_one_stops(idp, idp_keys):
    server, clock, client = idp
    ec_key, _ = idp_keys
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.jwks = {"keys": [_jwk(ec_key, "old", "ES256")]}
    old_token = mint(_pem(ec_key), kid="old", **AGENCY)
    assert _get(client, old_token).status_code == 200
    assert server.requests == 1

    # The IdP publishes a new key and starts signing with it: its first token makes one refetch.
    clock.advance(REFETCH_S)
    server.jwks = {"keys": [_jwk(ec_key, "old", "ES256"), _jwk(new_key, "new", "RS256")]}
    response = _get(client, _rs256(new_key, "new"))
    assert response.status_code == 200, response.text
    assert server.requests == 2
    assert _get(client, old_token).status_code == 200, "both keys are valid during the overlap"
    assert _get(client, _rs256(new_key, "new")).status_code == 200
    assert server.requests == 2, "known kids come from the cache"

    # The IdP removes the old key: the set fetched for the new kid still holds it until it expires, CACHE_S
    # after that fetch (the documented bound)...
    server.jwks = {"keys": [_jwk(new_key, "new", "RS256")]}
    clock.advance(CACHE_S - 1)
    assert _get(client, old_token).status_code == 200
    # ...then the next request fetches the set again, and the removed key verifies nothing any more.
    clock.advance(1)
    body = _assert_unauthorized(_get(client, old_token))
    assert "'old'" in body["detail"]
    assert server.requests == 3
    assert _get(client, _rs256(new_key, "new")).status_code == 200
    # Fresh tokens signed by the removed key, too: there is no per-kid cache that outlives the set.
    clock.advance(REFETCH_S)
    _assert_unauthorized(_get(client, mint(_pem(ec_key), kid="old", **AGENCY)))


def test_jwks_random_kids_refetch_at_most_once_per_interval(idp, idp_keys):
    server, clock, client = idp
    _, rsa_key = idp_keys
    server.jwks = {"keys": [_jwk(rsa_key, "rsa-1", "RS256")]}
    assert _get(client, _rs256(rsa_key, "rsa-1")).status_code == 200
    assert server.requests == 1
    for round_ in range(1, 4):
        clock.advance(REFETCH_S)
        for _ in range(25):
            _assert_unauthorized(_get(client, _rs256(rsa_key, uuid.uuid4().hex)))
            clock.advance(REFETCH_S / 100)
        assert server.requests == 1 + round_, "one refetch per interval, however many unknown kids"
        assert _get(client, _rs256(rsa_key, "rsa-1")).status_code == 200


def test_jwks_a_key_first_seen_within_the_interval_waits_for_it(idp, idp_keys):
    # The price of the refetch limit: a key used within REFETCH_S of the last fetch is refused until then.
    # (OIDC providers publish a key before signing with it, so the cache expiry normally finds it first.)
    server, clock, client = idp
    ec_key, rsa_key = idp_keys
    server.jwks = {"keys": [_jwk(ec_key, "ec-1", "ES256")]}
    assert _get(client, mint(_pem(ec_key), kid="ec-1", **AGENCY)).status_code == 200
    server.jwks = {"keys": [_jwk(ec_key, "ec-1", "ES256"), _jwk(rsa_key, "rsa-1", "RS256")]}
    clock.advance(REFETCH_S / 2)
    _assert_unauthorized(_get(client, _rs256(rsa_key, "rsa-1")))
    assert server.requests == 1
    clock.advance(REFETCH_S / 2)
    assert _get(client, _rs256(rsa_key, "rsa-1")).status_code == 200
    assert server.requests == 2


def test_jwks_outage_is_503_fails_closed_after_expiry_and_is_not_hammered(idp, idp_keys):
    server, clock, client = idp
    _, rsa_key = idp_keys
    server.jwks = {"keys": [_jwk(rsa_key, "rsa-1", "RS256")]}
    token = _rs256(rsa_key, "rsa-1")
    assert _get(client, token).status_code == 200
    server.failing = True
    # While the set is fresh, known kids keep working; an unknown kid's refetch fails (503) but keeps the set.
    clock.advance(REFETCH_S)
    assert _get(client, _rs256(rsa_key, "unknown")).status_code == 503
    assert server.requests == 2
    assert _get(client, token).status_code == 200
    # Expired during the outage: nothing stale is trusted (503), and retries are one per interval.
    clock.advance(CACHE_S)
    for _ in range(10):
        response = _get(client, token)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
    assert server.requests == 3
    server.failing = False
    clock.advance(REFETCH_S)
    assert _get(client, token).status_code == 200
    assert server.requests == 4


def test_jwks_an_oversized_kid_is_not_echoed_whole(jwks_client, idp_keys):
    _, rsa_key = idp_keys
    kid = "k" * 5000
    body = _assert_unauthorized(_get(jwks_client, _rs256(rsa_key, kid)))
    assert kid[:100] in body["detail"] and kid[:101] not in body["detail"]


@pytest.mark.parametrize("claims", [
    {"sub": ""}, {"sub": "x" * 257}, {"sub": 7}, {"roles": "coordinator"}, {"roles": [["coordinator"]]},
    {"agency": "MX-INM"}, {"agency": None},
])
def test_claims_of_the_wrong_shape_are_401_without_pythons_words(dev_client, dev_keys, claims):
    private, _ = dev_keys
    issued = int(time.time())
    body = {"iss": "enlace-dev-issuer", "aud": "enlace", "sub": "u", "iat": issued, "exp": issued + 60,
            "agency": {"id": "MX-INM"}, "roles": ["caseworker"], **claims}
    detail = _assert_unauthorized(_get(dev_client, jwt.encode(body, private, algorithm="ES256")))["detail"]
    for python_words in ("NoneType", "indices", "iterable", "object"):
        assert python_words not in detail, detail

"""Development token issuer, for local runs only.

``python -m enlace_platform.dev_issuer --agency MX-COMAR`` prints a signed token and nothing
else. The ES256 key pair is created on first use under ``.run/dev-issuer/``; services read the
public half (``ENLACE_AUTH_DEV_PUBLIC_KEY_PATH``). The agency's type and jurisdiction come from
the demo roster unless given; the services ignore them (the directory decides, enlace_platform.auth), and
refuse a token for an agency their directory does not hold.
"""

import json
import time
import uuid
from pathlib import Path

import jwt
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

REPO = Path(__file__).resolve().parents[2]
DEFAULT_KEY_DIR = REPO / ".run" / "dev-issuer"
DEFAULT_ROSTER = REPO / "deploy" / "demo" / "agencies.json"


def ensure_keypair(key_dir: Path) -> Path:
    private = key_dir / "private.pem"
    if not private.exists():
        key_dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        private.chmod(0o600)
        (key_dir / "public.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private


def mint(private_key_pem: bytes, *, agency_id: str, agency_type: str, jurisdiction: str, roles: list[str],
         subject: str | None = None, issuer: str = "enlace-dev-issuer", audience: str = "enlace",
         ttl_s: int = 8 * 3600, now: float | None = None, kid: str | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject or f"{agency_id.lower()}-user",
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": str(uuid.uuid4()),
        "agency": {"id": agency_id, "type": agency_type, "jurisdiction": jurisdiction},
        "roles": roles,
    }
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, private_key_pem, algorithm="ES256", headers=headers)


def roster_entry(agency_id: str, roster: Path = DEFAULT_ROSTER) -> dict:
    for agency in json.loads(roster.read_text())["agencies"]:
        if agency["id"] == agency_id:
            return agency
    raise typer.BadParameter(f"agency {agency_id!r} is not in {roster}")


def main(
    agency: str = typer.Option(..., "--agency", help="Agency id, e.g. MX-INM"),
    agency_type: str = typer.Option(None, "--type", help="Defaults to the demo roster's"),
    jurisdiction: str = typer.Option(None, help="Defaults to the demo roster's"),
    roles: str = typer.Option("caseworker", help="Comma-separated roles"),
    key_dir: Path = typer.Option(DEFAULT_KEY_DIR, envvar="ENLACE_DEV_ISSUER_DIR"),
    ttl_s: int = typer.Option(8 * 3600),
) -> None:
    if agency_type is None or jurisdiction is None:
        entry = roster_entry(agency)
        agency_type = agency_type or entry["type"]
        jurisdiction = jurisdiction or entry["jurisdiction"]
    private = ensure_keypair(key_dir)
    typer.echo(mint(private.read_bytes(), agency_id=agency, agency_type=agency_type, jurisdiction=jurisdiction,
                    roles=[r for r in roles.split(",") if r], ttl_s=ttl_s))


if __name__ == "__main__":
    typer.run(main)

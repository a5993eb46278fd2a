"""Throwaway credentials: a CA, a server certificate for 127.0.0.1/localhost signed by it,
and an APNs-style EC P-256 signing key (.p8)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KEY_ID = "FAKEKEY123"
TEAM_ID = "FAKETEAM12"
TOPIC = "com.example.dispatch"


@dataclass(frozen=True)
class Credentials:
    ca_file: Path
    cert_file: Path
    key_file: Path
    signing_key_file: Path
    key_id: str = KEY_ID
    team_id: str = TEAM_ID
    topic: str = TOPIC

    def environment(self, port: int, host: str = "127.0.0.1") -> dict[str, str]:
        """The settings (environment variables) that point Dispatch at a fake server."""
        return {
            "APNS_HOST": host,
            "APNS_PORT": str(port),
            "APNS_CA_FILE": str(self.ca_file),
            "APNS_KEY_PATH": str(self.signing_key_file),
            "APNS_KEY_ID": self.key_id,
            "APNS_TEAM_ID": self.team_id,
            "APNS_TOPIC": self.topic,
        }

    def public_key_pem(self) -> bytes:
        private = serialization.load_pem_private_key(self.signing_key_file.read_bytes(), None)
        return private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    is_ca: bool,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _paths(directory: Path) -> Credentials:
    return Credentials(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server-key.pem",
        signing_key_file=directory / f"AuthKey_{KEY_ID}.p8",
    )


def _still_valid(credentials: Credentials) -> bool:
    """Every file there, and the server certificate good for at least another day."""
    files = (
        credentials.ca_file,
        credentials.cert_file,
        credentials.key_file,
        credentials.signing_key_file,
    )
    if not all(path.is_file() for path in files):
        return False
    server = x509.load_pem_x509_certificate(credentials.cert_file.read_bytes())
    return server.not_valid_after_utc > datetime.now(UTC) + timedelta(days=1)


def make_credentials(directory: Path, reuse: bool = False) -> Credentials:
    """Write a fresh CA, server certificate and signing key into `directory` and return
    their paths. With `reuse`, valid ones already there are kept, so that a development
    stack configured with them keeps working across restarts of the fake server."""
    credentials = _paths(directory)
    if reuse and _still_valid(credentials):
        return credentials
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Dispatch fake APNs CA", ca_key, None, ca_key, is_ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", server_key, ca.subject, ca_key, is_ca=False)
    signing_key = ec.generate_private_key(ec.SECP256R1())
    credentials.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    credentials.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    for path, key in (
        (credentials.key_file, server_key),
        (credentials.signing_key_file, signing_key),
    ):
        path.touch(mode=0o600)
        path.write_bytes(_pem_key(key))
    return credentials

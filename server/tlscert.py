"""The appliance's self-signed TLS certificate, made once on first start.

The key is ECDSA P-256, written 0600; the certificate names the loopback addresses and the
configured listen and masquerade addresses. Clients pin it: ``sha256:HEX`` is the SHA-256 of the
certificate (what ``openssl x509 -fingerprint -sha256`` shows), and ``sha256//BASE64`` the hash
of its public key, as ``curl --pinnedpubkey`` takes it. This module never prints the key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airgap.shared.errors import ServerError

VALID_DAYS = 3650


@dataclass(frozen=True)
class Fingerprints:
    certificate: str  # sha256:HEX of the DER certificate
    public_key: str  # sha256//BASE64 of the DER SubjectPublicKeyInfo (curl --pinnedpubkey)


def ensure_certificate(cert: Path, key: Path, *, addresses: Iterable[str]) -> bool:
    """Create the pair unless both exist; True if it was created now."""
    if cert.exists() and key.exists():
        return False
    private = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for text in dict.fromkeys(["127.0.0.1", "::1", *addresses]):
        ip = ipaddress.ip_address(text)
        if not ip.is_unspecified:
            names.append(x509.IPAddress(ip))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airgap serve")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _write(key, key_pem, 0o600)
        _write(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise ServerError(f"cannot write the TLS certificate: {exc.strerror or exc}") from exc
    return True


def fingerprints(cert: Path) -> Fingerprints:
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ServerError(f"cannot read the TLS certificate {cert}") from exc
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return Fingerprints(
        certificate="sha256:" + hashlib.sha256(der).hexdigest(),
        public_key="sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)

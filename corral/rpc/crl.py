"""The cluster CA's certificate revocation list (``crl.pem``).

``node remove`` revokes the removed node's certificate: the master writes a new CRL signed by
the CA (:func:`write_crl`) and sends it to every node. Servers and clients load it into their
TLS contexts (see ``tls.py``), so a handshake with a revoked certificate fails in both
directions. The serials revoked are kept in the store; the file is rebuilt from them.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from corral.common.errors import TlsError
from corral.common.paths import Paths
from corral.rpc import tls


def build_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serials: Iterable[int],
    *,
    now: datetime.datetime,
) -> x509.CertificateRevocationList:
    """The CA's revocation list of ``serials`` (pure: no I/O).

    It is valid as long as the CA: an expired CRL would make every handshake fail, and
    the master writes a new one whenever a certificate is revoked.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - tls.BACKDATE)
        .next_update(max(ca_cert.not_valid_after_utc, now + datetime.timedelta(days=1)))
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - tls.BACKDATE)
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def write_crl(paths: Paths, serials: Iterable[int]) -> bytes:
    """Write ``paths.crl`` (0644) listing ``serials``, signed by the CA under ``paths``.

    Returns:
        The CRL as written (PEM), for distribution to the nodes.

    Raises:
        TlsError: the CA is missing or invalid, or the file cannot be written.
    """
    ca_cert, ca_key = tls.load_ca(paths)
    crl = build_crl(ca_cert, ca_key, serials, now=tls.utc_now())
    data = crl.public_bytes(serialization.Encoding.PEM)
    tls.write_pem(paths.crl, data, 0o644)
    return data


def revoked_serials(crl_path: str) -> set[int]:
    """The serial numbers a CRL file lists (empty when the file does not exist).

    Raises:
        TlsError: the file exists but is not a valid PEM CRL.
    """
    if not os.path.exists(crl_path):
        return set()
    data = tls.read_pem_bytes(crl_path, "revocation list")
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise TlsError(f"{crl_path} holds no valid CRL: {exc}", path=crl_path) from exc
    return {r.serial_number for r in crl}

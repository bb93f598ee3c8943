"""The cluster's certificates: CA, node certificates, the RAPI certificate, TLS contexts.

Every Corral cluster has its own certificate authority, created by ``cluster init``. Each node
holds a certificate signed by it, used both as the node daemon's server certificate and as the
client certificate the master presents when it calls a node (mutual TLS, see
``docs/architecture/rpc.md``)::

    ca.pem / ca.key      EC P-256, CA:true (path length 0), keyCertSign + cRLSign, 10 years
    node.pem / node.key  EC P-256, CN = SAN DNS = node name, SAN IP per address,
                         EKU serverAuth + clientAuth, signed by the CA, 10 years (<= CA)
    rapi.pem             certificate + key in one file (Ganeti's rapi.pem), serverAuth,
                         signed by the CA when its key is here, else self-signed

Private keys are written with mode 0600, certificates 0644, atomically (a reader never sees a
half-written file). Every failure — a missing or unreadable file, a malformed PEM, a key that
does not match — raises :class:`~corral.common.errors.TlsError` naming the file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.common.errors import ErrorKind, TlsError
from corral.common.fileio import write_atomic
from corral.common.paths import Paths

#: Validity of the CA and of the certificates it signs.
VALIDITY = datetime.timedelta(days=3650)
#: Certificates are back-dated a little so hosts with slightly late clocks accept them.
_BACKDATE = datetime.timedelta(hours=1)


# --- reading and writing -----------------------------------------------------------------------


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise TlsError(
            f"{what} {path} does not exist (run 'corral cluster init' first)",
            kind=ErrorKind.ENVIRONMENT,
            path=path,
        ) from exc
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {exc.strerror}", path=path) from exc


def load_certificate(path: str) -> x509.Certificate:
    """Load the first certificate of a PEM file.

    Raises:
        TlsError: the file is missing, unreadable or holds no valid certificate.
    """
    data = _read_bytes(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise TlsError(f"{path} holds no valid PEM certificate: {exc}", path=path) from exc


def _load_ec_key(path: str) -> ec.EllipticCurvePrivateKey:
    data = _read_bytes(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{path} holds no valid unencrypted PEM key: {exc}", path=path) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{path} holds a {type(key).__name__}, expected an EC key", path=path)
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: str, data: bytes, mode: int) -> None:
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, data, mode=mode)
    except OSError as exc:
        raise TlsError(f"cannot write {path}: {exc.strerror or exc}", path=path) from exc


# --- pure builders -----------------------------------------------------------------------------


def _san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries: IP addresses as IPAddress, everything else as DNSName (deduplicated)."""
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            try:
                out.append(x509.DNSName(name))
            except ValueError as exc:  # not an A-label (e.g. non-ASCII)
                raise TlsError(
                    f"{name!r} cannot be used as a certificate name: {exc}",
                    kind=ErrorKind.INVALID,
                    name=name,
                ) from exc
    return out


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def build_ca(
    key: ec.EllipticCurvePrivateKey, cluster_name: str, *, now: datetime.datetime
) -> x509.Certificate:
    """Build the self-signed CA certificate of a cluster (pure: no I/O)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Corral CA {cluster_name}"),
        ]
    )
    builder = (
        _builder(name, name, key.public_key(), now, now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(key, hashes.SHA256())


def build_leaf(
    *,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    san: Sequence[str],
    client_auth: bool,
    issuer_cert: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> x509.Certificate:
    """Build a server (and optionally client) certificate (pure: no I/O).

    With ``issuer_cert`` None the certificate is self-signed by ``issuer_key``. Its validity
    never outlasts the issuer's.

    Raises:
        TlsError: a SAN entry is neither an IP address nor a valid DNS name (kind INVALID).
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_after = now + VALIDITY
    if issuer_cert is not None:
        not_after = min(not_after, issuer_cert.not_valid_after_utc)
    issuer = issuer_cert.subject if issuer_cert is not None else subject
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        _builder(subject, issuer, public_key, now, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(san)), critical=False)
    )
    if issuer_cert is not None:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- the cluster's files -----------------------------------------------------------------------


def create_ca(paths: Paths, cluster_name: str, *, overwrite: bool = False) -> None:
    """Create the cluster CA: ``paths.ca_cert`` (0644) and ``paths.ca_key`` (0600).

    Args:
        paths: the host's file layout.
        cluster_name: written into the CA's common name.
        overwrite: replace an existing CA. Without it an existing CA is refused, because a
            new CA invalidates every node certificate of the cluster.

    Raises:
        TlsError: a CA exists already (kind EXISTS) or the files cannot be written.
    """
    if not overwrite and (os.path.exists(paths.ca_cert) or os.path.exists(paths.ca_key)):
        raise TlsError(
            f"a cluster CA exists already in {paths.crypto_dir}; refusing to replace it",
            kind=ErrorKind.EXISTS,
            path=paths.ca_cert,
        )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_ca(key, cluster_name, now=_now())
    # The key goes first: a CA certificate without its key would be useless.
    _write(paths.ca_key, _key_pem(key), 0o600)
    _write(paths.ca_cert, _cert_pem(cert), 0o644)


def _load_ca(ca: Paths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = load_certificate(ca.ca_cert)
    key = _load_ec_key(ca.ca_key)
    if cert.public_key() != key.public_key():
        raise TlsError(
            f"CA key {ca.ca_key} does not belong to CA certificate {ca.ca_cert}",
            path=ca.ca_key,
        )
    return cert, key


def issue_node_cert(
    paths: Paths, node_name: str, addresses: Sequence[str], *, ca: Paths | None = None
) -> None:
    """Issue this node's certificate, ``paths.node_cert`` (0644) and ``paths.node_key`` (0600).

    The certificate has CN = node name, SANs for the node name (DNS) and every address (IP,
    or DNS if it is not an IP address), and is valid for both server and client use.
    An existing node certificate is replaced (renewal).

    Args:
        paths: where the node's files go.
        node_name: the node's name; RPC clients check the server certificate against it.
        addresses: the node's addresses (usually its primary IP).
        ca: where the CA's certificate and key are, when not under ``paths`` (e.g. a test
            giving each node daemon its own root). The CA certificate is copied to
            ``paths.ca_cert`` if it is not there already.

    Raises:
        TlsError: the CA is missing or invalid, a name is unusable, or a file cannot be written.
    """
    ca_paths = ca or paths
    ca_cert, ca_key = _load_ca(ca_paths)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_leaf(
        public_key=key.public_key(),
        common_name=node_name,
        san=[node_name, *addresses],
        client_auth=True,
        issuer_cert=ca_cert,
        issuer_key=ca_key,
        now=_now(),
    )
    if ca_paths.ca_cert != paths.ca_cert:
        _write(paths.ca_cert, _cert_pem(ca_cert), 0o644)
    _write(paths.node_key, _key_pem(key), 0o600)
    _write(paths.node_cert, _cert_pem(cert), 0o644)


def create_rapi_cert(paths: Paths, addresses: Sequence[str]) -> None:
    """Create the RAPI server certificate ``paths.rapi_cert`` (cert + key, mode 0600).

    Signed by the cluster CA when ``paths.ca_key`` exists (clients may then verify it against
    ``ca.pem``), self-signed otherwise (Ganeti's RAPI clients do not verify by default).
    SANs: ``localhost`` and every address given.

    Raises:
        TlsError: the CA exists but is invalid, a name is unusable, or the file cannot be
            written.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_cert: x509.Certificate | None = None
    issuer_key = key
    if os.path.exists(paths.ca_key):
        issuer_cert, issuer_key = _load_ca(paths)
    names = [*addresses, "localhost"]
    cert = build_leaf(
        public_key=key.public_key(),
        common_name=names[0],
        san=names,
        client_auth=False,
        issuer_cert=issuer_cert,
        issuer_key=issuer_key,
        now=_now(),
    )
    _write(paths.rapi_cert, _cert_pem(cert) + _key_pem(key), 0o600)


# --- inspection --------------------------------------------------------------------------------


def cert_fingerprint(path: str) -> str:
    """SHA-256 fingerprint of the (first) certificate in ``path``, as ``AB:CD:...``.

    Raises:
        TlsError: the file is missing, unreadable or holds no valid certificate.
    """
    digest = load_certificate(path).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def cert_common_name(path: str) -> str:
    """The subject common name of the certificate in ``path`` (e.g. the node name).

    Raises:
        TlsError: the file holds no valid certificate or it has no common name.
    """
    cert = load_certificate(path)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise TlsError(f"certificate {path} has no common name", path=path)
    return str(attrs[0].value)


def cert_addresses(path: str) -> list[str]:
    """The IP addresses in the SANs of the certificate in ``path``, in order.

    Raises:
        TlsError: the file holds no valid certificate.
    """
    cert = load_certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def verify_signed_by(cert_path: str, ca_path: str) -> None:
    """Check that the certificate in ``cert_path`` was issued and signed by the CA.

    Raises:
        TlsError: a file is invalid, or the certificate was not signed by this CA.
    """
    cert = load_certificate(cert_path)
    ca_cert = load_certificate(ca_path)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        why = str(exc) or "bad signature"
        raise TlsError(
            f"certificate {cert_path} was not issued by the CA in {ca_path}: {why}",
            path=cert_path,
        ) from exc


# --- TLS contexts ------------------------------------------------------------------------------


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsError(
            f"certificate {exc.filename or cert} does not exist (run 'corral cluster init' first)",
            path=cert,
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(
            f"cannot use certificate {cert} with key {key or cert}: {exc}", path=cert
        ) from exc


def _load_ca_file(ctx: ssl.SSLContext, ca_cert: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_cert)
    except FileNotFoundError as exc:
        raise TlsError(
            f"cluster CA {ca_cert} does not exist (run 'corral cluster init' first)",
            path=ca_cert,
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot use cluster CA {ca_cert}: {exc}", path=ca_cert) from exc


def server_context_from_files(*, ca_cert: str, cert: str, key: str) -> ssl.SSLContext:
    """A TLS >= 1.2 server context that requires client certificates signed by ``ca_cert``.

    Raises:
        TlsError: a file is missing or invalid, or the key does not match the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca_file(ctx, ca_cert)
    _load_chain(ctx, cert, key)
    return ctx


def client_context_from_files(*, ca_cert: str, cert: str, key: str) -> ssl.SSLContext:
    """A TLS >= 1.2 client context trusting only ``ca_cert`` and presenting ``cert``.

    Host names are checked: the caller connects with the node's name as server name (see
    ``rpc/client.py``), so a node cannot impersonate another one.

    Raises:
        TlsError: a file is missing or invalid, or the key does not match the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    _load_ca_file(ctx, ca_cert)
    _load_chain(ctx, cert, key)
    return ctx


def server_ssl_context(paths: Paths) -> ssl.SSLContext:
    """The node daemon's context: our node certificate, callers must have one from our CA.

    Raises:
        TlsError: see :func:`server_context_from_files`.
    """
    return server_context_from_files(
        ca_cert=paths.ca_cert, cert=paths.node_cert, key=paths.node_key
    )


def client_ssl_context(paths: Paths) -> ssl.SSLContext:
    """The RPC client's context: trust our CA, present our node certificate.

    Raises:
        TlsError: see :func:`client_context_from_files`.
    """
    return client_context_from_files(
        ca_cert=paths.ca_cert, cert=paths.node_cert, key=paths.node_key
    )

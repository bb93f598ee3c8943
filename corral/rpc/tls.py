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
    crl.pem              the CA's revocation list: serials of removed nodes' certificates,
                         signed by the CA; servers and clients refuse those certificates
                         (written and read by ``crl.py``)
    join.pem             a joining node's self-signed bootstrap certificate (its key is
                         node.key, the key its cluster certificate will certify)

Private keys are written with mode 0600, certificates 0644, atomically (a reader never sees a
half-written file). Every failure — a missing or unreadable file, a malformed PEM, a key that
does not match — raises :class:`~corral.common.errors.TlsError` naming the file.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.common.errors import ErrorKind, RpcError, TlsError
from corral.common.fileio import write_atomic
from corral.common.paths import Paths

_log = logging.getLogger(__name__)

#: Validity of the CA and of the certificates it signs.
VALIDITY = datetime.timedelta(days=3650)
#: Certificates are back-dated a little so hosts with slightly late clocks accept them.
BACKDATE = datetime.timedelta(hours=1)


# --- reading and writing -----------------------------------------------------------------------


def read_pem_bytes(path: str, what: str) -> bytes:
    """The bytes of the file ``path`` (``what`` names it in errors).

    Raises:
        TlsError: the file is missing (kind ENVIRONMENT) or unreadable.
    """
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
    data = read_pem_bytes(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise TlsError(f"{path} holds no valid PEM certificate: {exc}", path=path) from exc


def _load_ec_key(path: str) -> ec.EllipticCurvePrivateKey:
    data = read_pem_bytes(path, "private key")
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


def write_pem(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``, creating its directory (0700).

    Raises:
        TlsError: the directory or the file cannot be written.
    """
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
        .not_valid_before(now - BACKDATE)
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


def utc_now() -> datetime.datetime:
    """The current time, timezone-aware (UTC), for certificate and CRL dates."""
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
    cert = build_ca(key, cluster_name, now=utc_now())
    # The key goes first: a CA certificate without its key would be useless.
    write_pem(paths.ca_key, _key_pem(key), 0o600)
    write_pem(paths.ca_cert, _cert_pem(cert), 0o644)


def load_ca(ca: Paths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key under ``ca``.

    Raises:
        TlsError: either file is missing or invalid, or the key does not match the certificate.
    """
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
    ca_cert, ca_key = load_ca(ca_paths)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_leaf(
        public_key=key.public_key(),
        common_name=node_name,
        san=[node_name, *addresses],
        client_auth=True,
        issuer_cert=ca_cert,
        issuer_key=ca_key,
        now=utc_now(),
    )
    if ca_paths.ca_cert != paths.ca_cert:
        write_pem(paths.ca_cert, _cert_pem(ca_cert), 0o644)
    write_pem(paths.node_key, _key_pem(key), 0o600)
    write_pem(paths.node_cert, _cert_pem(cert), 0o644)


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
        issuer_cert, issuer_key = load_ca(paths)
    names = [*addresses, "localhost"]
    cert = build_leaf(
        public_key=key.public_key(),
        common_name=names[0],
        san=names,
        client_auth=False,
        issuer_cert=issuer_cert,
        issuer_key=issuer_key,
        now=utc_now(),
    )
    write_pem(paths.rapi_cert, _cert_pem(cert) + _key_pem(key), 0o600)


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


def _load_crl(ctx: ssl.SSLContext, crl: str | None) -> None:
    """Check peer certificates against ``crl`` when the file exists (revoked ones fail)."""
    if crl is None or not os.path.exists(crl):
        return
    try:
        ctx.load_verify_locations(cafile=crl)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot use revocation list {crl}: {exc}", path=crl) from exc
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context_from_files(
    *, ca_cert: str, cert: str, key: str, crl: str | None = None
) -> ssl.SSLContext:
    """A TLS >= 1.2 server context that requires client certificates signed by ``ca_cert``.

    With ``crl`` naming an existing file (the CA's revocation list), client certificates
    listed there are refused ("certificate revoked").

    Raises:
        TlsError: a file is missing or invalid, or the key does not match the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca_file(ctx, ca_cert)
    _load_crl(ctx, crl)
    _load_chain(ctx, cert, key)
    return ctx


def client_context_from_files(
    *, ca_cert: str, cert: str, key: str, crl: str | None = None
) -> ssl.SSLContext:
    """A TLS >= 1.2 client context trusting only ``ca_cert`` and presenting ``cert``.

    Host names are checked: the caller connects with the node's name as server name (see
    ``rpc/client.py``), so a node cannot impersonate another one. With ``crl`` naming an
    existing file, server certificates listed there are refused.

    Raises:
        TlsError: a file is missing or invalid, or the key does not match the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    _load_ca_file(ctx, ca_cert)
    _load_crl(ctx, crl)
    _load_chain(ctx, cert, key)
    return ctx


def server_ssl_context(paths: Paths) -> ssl.SSLContext:
    """The node daemon's context: our certificate; callers need an unrevoked one from our CA.

    Raises:
        TlsError: see :func:`server_context_from_files`.
    """
    return server_context_from_files(
        ca_cert=paths.ca_cert, cert=paths.node_cert, key=paths.node_key, crl=paths.crl
    )


def client_ssl_context(paths: Paths) -> ssl.SSLContext:
    """The RPC client's context: trust our CA minus revoked certificates, present ours.

    Raises:
        TlsError: see :func:`client_context_from_files`.
    """
    return client_context_from_files(
        ca_cert=paths.ca_cert, cert=paths.node_cert, key=paths.node_key, crl=paths.crl
    )


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ReloadingContext:
    """An SSL context rebuilt when one of the files it was built from changes.

    Files are replaced atomically (rename), so the inode, mtime and size of each watched
    file tell whether it changed; checking costs one ``stat`` per file. Used for the CRL:
    after a node is removed, the next handshake already refuses its certificate.

    Args:
        build: makes a new context (raises TlsError on failure).
        watch: the files whose change triggers a rebuild.

    Raises:
        TlsError: the first build failed.
    """

    def __init__(self, build: Callable[[], ssl.SSLContext], watch: Sequence[str]) -> None:
        self._build = build
        self._watch = tuple(watch)
        self._stamps = self._stamp()
        self._ctx = build()

    def _stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_file_stamp(p) for p in self._watch)

    def get(self) -> ssl.SSLContext:
        """The current context (rebuilt first if a watched file changed).

        A rebuild that fails (e.g. a file half-way through being replaced by hand) keeps
        the previous context and is retried at the next call.
        """
        stamps = self._stamp()
        if stamps != self._stamps:
            try:
                ctx = self._build()
            except TlsError as exc:
                _log.warning("keeping the previous TLS settings: %s", exc)
            else:
                self._ctx, self._stamps = ctx, stamps
                _log.info("TLS settings reloaded (%s changed)", ", ".join(self._watch))
        return self._ctx


# --- joining a cluster -------------------------------------------------------------------------


def create_join_identity(paths: Paths, names: Sequence[str]) -> None:
    """Create a joining node's key and self-signed bootstrap certificate.

    The key is ``paths.node_key`` (kept if it exists: the cluster certificate will certify
    it), the certificate ``paths.join_cert`` with SANs ``names``.

    Raises:
        TlsError: a name is unusable, the existing key is invalid, or a file cannot be
            written.
    """
    if os.path.exists(paths.node_key):
        key = _load_ec_key(paths.node_key)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_pem(paths.node_key, _key_pem(key), 0o600)
    cert = build_leaf(
        public_key=key.public_key(),
        common_name="corral-joining-node",
        san=list(names) or ["corral-joining-node"],
        client_auth=False,
        issuer_cert=None,
        issuer_key=key,
        now=utc_now(),
    )
    write_pem(paths.join_cert, _cert_pem(cert), 0o644)


def join_server_context(paths: Paths) -> ssl.SSLContext:
    """The server context of a node in join mode: its bootstrap certificate, no client cert.

    Callers prove themselves with the join token instead (see ``rpc/calls_nodes.py``).

    Raises:
        TlsError: the bootstrap certificate or the key is missing or invalid.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE
    _load_chain(ctx, paths.join_cert, paths.node_key)
    return ctx


def pinned_client_context(cert_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts exactly one (self-signed) server certificate.

    The join client pins the bootstrap certificate it was shown; the node then proves with
    the join token that this certificate is its own (see ``rpc/calls_nodes.py``).

    Raises:
        TlsError: ``cert_pem`` is not a usable certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # NOTE: pinned by content, and the name is not known yet
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    try:
        ctx.load_verify_locations(cadata=cert_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise TlsError(f"cannot pin the node's bootstrap certificate: {exc}") from exc
    return ctx


def fetch_server_certificate(host: str, port: int, *, timeout: float) -> bytes:
    """The certificate a TLS server presents (PEM), without verifying it.

    Raises:
        RpcError: the server cannot be reached or does not speak TLS (kind ENVIRONMENT,
            reason ``unreachable``).
    """
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise RpcError(
            f"{host}:{port} unreachable: {why}",
            kind=ErrorKind.ENVIRONMENT,
            host=host,
            port=port,
            reason="unreachable",
        ) from exc
    return pem.encode("ascii")


def pem_fingerprint(pem: bytes) -> str:
    """SHA-256 fingerprint (hex, lower case) of a PEM certificate.

    Raises:
        TlsError: not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise TlsError(f"not a PEM certificate: {exc}") from exc
    return cert.fingerprint(hashes.SHA256()).hex()


def build_csr(paths: Paths, node_name: str) -> bytes:
    """A certificate signing request for this node's key (``paths.node_key``), CN = name.

    Raises:
        TlsError: the key is missing or invalid.
    """
    key = _load_ec_key(paths.node_key)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(
    ca: Paths, csr_pem: bytes, node_name: str, addresses: Sequence[str]
) -> tuple[bytes, int]:
    """Issue a node certificate for the key in a CSR (the key never leaves the node).

    Only the CSR's public key is used (its signature proves the node holds the key); the
    names are the master's: CN and DNS SAN = ``node_name``, IP SANs = ``addresses``.

    Returns:
        The certificate (PEM) and its serial number.

    Raises:
        TlsError: the CA is missing or invalid, or the CSR is malformed, badly signed or not
            for an EC P-256 key (kind INVALID).
    """
    ca_cert, ca_key = load_ca(ca)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise TlsError(f"invalid certificate request: {exc}", kind=ErrorKind.INVALID) from exc
    if not csr.is_signature_valid:
        raise TlsError("certificate request with a bad signature", kind=ErrorKind.INVALID)
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise TlsError("certificate request not for an EC P-256 key", kind=ErrorKind.INVALID)
    cert = build_leaf(
        public_key=public_key,
        common_name=node_name,
        san=[node_name, *addresses],
        client_auth=True,
        issuer_cert=ca_cert,
        issuer_key=ca_key,
        now=utc_now(),
    )
    return _cert_pem(cert), cert.serial_number


def check_node_cert(cert_pem: bytes, ca_pem: bytes, key_path: str, node_name: str) -> None:
    """Check the certificate the master sent to a joining node.

    It must be issued by ``ca_pem``, for the key in ``key_path`` and for ``node_name``.

    Raises:
        TlsError: any of these does not hold (kind INVALID).
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise TlsError(
            f"the certificate sent is not issued by the CA sent: {exc or 'bad signature'}",
            kind=ErrorKind.INVALID,
        ) from exc
    if cert.public_key() != _load_ec_key(key_path).public_key():
        raise TlsError("the certificate sent is not for this node's key", kind=ErrorKind.INVALID)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != node_name:
        raise TlsError(f"the certificate sent is not for node {node_name}", kind=ErrorKind.INVALID)


def cert_serial(path: str) -> int:
    """The serial number of the certificate in ``path``.

    Raises:
        TlsError: the file holds no valid certificate.
    """
    return load_certificate(path).serial_number

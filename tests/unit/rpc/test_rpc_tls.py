"""The cluster CA, node and RAPI certificates, and the TLS contexts built from them."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from corral.common.errors import ErrorKind, TlsError, error_from_wire
from corral.common.paths import Paths
from corral.rpc import tls


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cert(path: str) -> x509.Certificate:
    with open(path, "rb") as fh:
        return x509.load_pem_x509_certificate(fh.read())


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(str(tmp_path / "root"))
    p.ensure()
    return p


@pytest.fixture
def cluster(paths: Paths) -> Paths:
    tls.create_ca(paths, "c1.example")
    tls.issue_node_cert(paths, "node1.example", ["127.0.0.2", "::1"])
    return paths


def test_create_ca_files_modes_and_extensions(paths: Paths) -> None:
    tls.create_ca(paths, "c1")
    assert _mode(paths.ca_cert) == 0o644
    assert _mode(paths.ca_key) == 0o600
    ca = _cert(paths.ca_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.subject == ca.issuer
    assert "c1" in ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    life = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert life >= datetime.timedelta(days=3650)
    ca.verify_directly_issued_by(ca)  # self-signed, signature valid


def test_create_ca_refuses_to_replace_an_existing_ca(paths: Paths) -> None:
    tls.create_ca(paths, "c1")
    before = tls.cert_fingerprint(paths.ca_cert)
    with pytest.raises(TlsError) as err:
        tls.create_ca(paths, "c1")
    assert err.value.kind is ErrorKind.EXISTS
    assert tls.cert_fingerprint(paths.ca_cert) == before
    tls.create_ca(paths, "c1", overwrite=True)
    assert tls.cert_fingerprint(paths.ca_cert) != before


def test_node_cert_chain_verifies_as_server_and_client(cluster: Paths) -> None:
    ca = _cert(cluster.ca_cert)
    leaf = _cert(cluster.node_cert)
    store = Store([ca])
    # A real path validation (RFC 5280 + CA/B profile) as a TLS client would do it ...
    chain = (
        PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.DNSName("node1.example"))
        .verify(leaf, [])
    )
    assert chain[-1] == ca
    chain = (
        PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.2")))
        .verify(leaf, [])
    )
    # ... and as a TLS server verifying a client certificate.
    client = PolicyBuilder().store(store).build_client_verifier().verify(leaf, [])
    assert client.chain[-1] == ca


def test_node_cert_fields_and_modes(cluster: Paths) -> None:
    assert _mode(cluster.node_cert) == 0o644
    assert _mode(cluster.node_key) == 0o600
    leaf = _cert(cluster.node_cert)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node1.example"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.2", "::1"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.not_valid_after_utc <= _cert(cluster.ca_cert).not_valid_after_utc
    tls.verify_signed_by(cluster.node_cert, cluster.ca_cert)
    assert tls.cert_common_name(cluster.node_cert) == "node1.example"
    assert tls.cert_addresses(cluster.node_cert) == ["127.0.0.2", "::1"]


def test_cert_from_another_ca_is_not_signed_by_ours(cluster: Paths, tmp_path: Path) -> None:
    other = Paths(str(tmp_path / "other"))
    tls.create_ca(other, "c2")
    tls.issue_node_cert(other, "node1.example", ["127.0.0.2"])
    with pytest.raises(TlsError, match="not issued by the CA"):
        tls.verify_signed_by(other.node_cert, cluster.ca_cert)


def test_issue_node_cert_with_ca_elsewhere_copies_ca_cert(cluster: Paths, tmp_path: Path) -> None:
    node2 = Paths(str(tmp_path / "node2"))
    tls.issue_node_cert(node2, "node2", ["127.0.0.3"], ca=cluster)
    assert not os.path.exists(node2.ca_key)  # the CA key stays on the master
    assert tls.cert_fingerprint(node2.ca_cert) == tls.cert_fingerprint(cluster.ca_cert)
    tls.verify_signed_by(node2.node_cert, cluster.ca_cert)


def test_issue_node_cert_without_ca_says_what_to_do(paths: Paths) -> None:
    with pytest.raises(TlsError, match="corral cluster init"):
        tls.issue_node_cert(paths, "n1", ["127.0.0.2"])


def test_unusable_name_is_rejected_with_kind_invalid(paths: Paths) -> None:
    tls.create_ca(paths, "c1")
    with pytest.raises(TlsError) as err:
        tls.issue_node_cert(paths, "nöde", [])
    assert err.value.kind is ErrorKind.INVALID
    assert not os.path.exists(paths.node_cert)


def test_mismatched_ca_key_is_detected(paths: Paths, tmp_path: Path) -> None:
    tls.create_ca(paths, "c1")
    other = Paths(str(tmp_path / "other"))
    tls.create_ca(other, "c2")
    os.replace(other.ca_key, paths.ca_key)
    with pytest.raises(TlsError, match="does not belong"):
        tls.issue_node_cert(paths, "n1", [])


def test_garbage_certificate_raises_tls_error(paths: Paths) -> None:
    os.makedirs(paths.crypto_dir, exist_ok=True)
    with open(paths.ca_cert, "w") as fh:
        fh.write("not a certificate\n")
    with pytest.raises(TlsError, match="no valid PEM certificate"):
        tls.cert_fingerprint(paths.ca_cert)


def test_rapi_cert_signed_by_ca_is_one_pem_usable_by_ssl(cluster: Paths) -> None:
    tls.create_rapi_cert(cluster, ["127.0.0.2"])
    assert _mode(cluster.rapi_cert) == 0o600
    with open(cluster.rapi_cert, "rb") as fh:
        data = fh.read()
    assert b"BEGIN CERTIFICATE" in data and b"PRIVATE KEY" in data
    serialization.load_pem_private_key(data, password=None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cluster.rapi_cert)  # cert and key from the same file, as uvicorn does
    tls.verify_signed_by(cluster.rapi_cert, cluster.ca_cert)
    leaf = _cert(cluster.rapi_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.2"]


def test_rapi_cert_self_signed_without_ca(paths: Paths) -> None:
    tls.create_rapi_cert(paths, ["127.0.0.5"])
    leaf = _cert(paths.rapi_cert)
    assert leaf.issuer == leaf.subject
    leaf.verify_directly_issued_by(leaf)


def test_fingerprint_is_sha256_of_der(cluster: Paths) -> None:
    der = _cert(cluster.ca_cert).public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest().upper()
    assert tls.cert_fingerprint(cluster.ca_cert).replace(":", "") == expected


def test_contexts_require_certificates_and_tls12(cluster: Paths) -> None:
    server = tls.server_ssl_context(cluster)
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    client = tls.client_ssl_context(cluster)
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname is True
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_context_with_missing_files_raises_tls_error(paths: Paths) -> None:
    with pytest.raises(TlsError, match="cluster init"):
        tls.server_ssl_context(paths)


def test_context_with_key_of_another_cert_raises_tls_error(cluster: Paths, tmp_path: Path) -> None:
    other = Paths(str(tmp_path / "other"))
    tls.create_ca(other, "c2")
    tls.issue_node_cert(other, "x", [])
    with pytest.raises(TlsError, match="cannot use certificate"):
        tls.client_context_from_files(
            ca_cert=cluster.ca_cert, cert=cluster.node_cert, key=other.node_key
        )


def test_tls_error_crosses_the_wire_with_its_type() -> None:
    err = TlsError("bad cert", path="/x")
    back = error_from_wire(err.to_wire())
    assert type(back) is TlsError
    assert back.fields == {"path": "/x"}

"""The join protocol and cluster files on the node side, with real keys and certificates in
temporary roots (no daemon: the node's JoinState is called directly, as the daemon does)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from corral.common.errors import CorralError, ErrorKind, ParamError, TlsError
from corral.common.paths import Paths
from corral.node.backend import membership
from corral.rpc import tls
from corral.rpc.calls_nodes import (
    ClusterFile,
    JoinFinishRequest,
    JoinHelloRequest,
    WriteFilesRequest,
    join_mac,
    mac_ok,
)


@pytest.fixture
def master(tmp_path: Path) -> Paths:
    paths = Paths(str(tmp_path / "master"))
    paths.ensure()
    tls.create_ca(paths, "unit")
    return paths


@pytest.fixture
def node(tmp_path: Path) -> Paths:
    return Paths(str(tmp_path / "node"))


def _hello(name: str = "n2") -> JoinHelloRequest:
    return JoinHelloRequest(
        node_name=name, addresses=["127.0.0.2"], master_nonce="ab" * 16, master_version="x"
    )


def _finish(
    master: Paths, state: membership.JoinState, token: str, *, name: str = "n2"
) -> tuple[JoinFinishRequest, int]:
    """A finish request from a master holding ``token`` (it checks the hello MAC only when
    the token is right: a master with a wrong token would stop there, a forger would not)."""
    hello = _hello(name)
    answer = state.node_join_hello(hello)
    right = mac_ok(join_mac(token, "hello", hello, answer), answer.mac)
    assert right == (token == membership.read_token(state.paths))
    cert, serial = tls.sign_csr(master, answer.csr_pem.encode(), name, ["127.0.0.2"])
    req = JoinFinishRequest(
        node_name=name,
        node_nonce=answer.node_nonce,
        cert_pem=cert.decode(),
        ca_pem=Path(master.ca_cert).read_text(),
        files=[ClusterFile.of("cluster_conf", b"{}\n")],
        mac="",
    )
    req.mac = join_mac(token, "finish", answer.mac, req)
    return req, serial


def test_mac_covers_every_field() -> None:
    hello = _hello()
    mac = join_mac("tok", "hello", hello)
    assert mac == join_mac("tok", "hello", _hello())
    assert mac != join_mac("tok2", "hello", hello)
    assert mac != join_mac("tok", "finish", hello)
    assert mac != join_mac("tok", "hello", _hello("n3"))
    assert not mac_ok(mac, mac[:-1] + ("0" if mac[-1] != "0" else "1"))


def test_prepare_join_is_root_only_and_stable(node: Paths) -> None:
    token = membership.prepare_join(node, ["127.0.0.2"])
    assert stat.S_IMODE(os.stat(node.join_token).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(node.node_key).st_mode) == 0o600
    assert membership.prepare_join(node, []) == token  # a restart keeps the token
    assert membership.prepare_join(node, [], new_token=True) != token


def test_join_installs_identity_and_forgets_token(master: Paths, node: Paths) -> None:
    token = membership.prepare_join(node, [])
    key_before = Path(node.node_key).read_bytes()
    joined: list[str] = []
    state = membership.JoinState(node, joined.append)
    req, serial = _finish(master, state, token)
    done = state.node_join_finish(req)
    assert mac_ok(join_mac(token, "done", req.mac), done.mac)
    assert joined == ["n2"]
    assert Path(node.node_key).read_bytes() == key_before  # the key never changed hands
    tls.verify_signed_by(node.node_cert, master.ca_cert)
    assert tls.cert_serial(node.node_cert) == serial
    assert Path(node.cluster_conf).read_text() == "{}\n"
    assert not os.path.exists(node.join_token)
    assert membership.is_member(node)
    with pytest.raises(CorralError) as err:  # one-time: no second join
        state.node_join_hello(_hello())
    assert err.value.kind is ErrorKind.WRONG_STATE
    with pytest.raises(CorralError):
        membership.prepare_join(node, [])


def test_wrong_token_installs_nothing(master: Paths, node: Paths) -> None:
    membership.prepare_join(node, [])
    state = membership.JoinState(node)
    req, _serial = _finish(master, state, "not-the-token")
    with pytest.raises(TlsError) as err:
        state.node_join_finish(req)
    assert err.value.kind is ErrorKind.INVALID
    assert not os.path.exists(node.node_cert)
    assert not os.path.exists(node.ca_cert)
    assert os.path.exists(node.join_token)
    # the nonce was used up: a replay of the same finish is refused too
    with pytest.raises(CorralError):
        state.node_join_finish(req)


def test_certificate_for_another_key_refused(master: Paths, node: Paths, tmp_path: Path) -> None:
    token = membership.prepare_join(node, [])
    state = membership.JoinState(node)
    other = Paths(str(tmp_path / "other"))
    membership.prepare_join(other, [])
    hello = _hello()
    answer = state.node_join_hello(hello)
    foreign_csr = tls.build_csr(other, "n2")
    cert, _ = tls.sign_csr(master, foreign_csr, "n2", [])
    req = JoinFinishRequest(
        node_name="n2",
        node_nonce=answer.node_nonce,
        cert_pem=cert.decode(),
        ca_pem=Path(master.ca_cert).read_text(),
        mac="",
    )
    req.mac = join_mac(token, "finish", answer.mac, req)
    with pytest.raises(TlsError, match="not for this node's key"):
        state.node_join_finish(req)
    assert not os.path.exists(node.node_cert)


def test_write_files_whitelist(node: Paths) -> None:
    with pytest.raises(ParamError):
        membership.write_files(
            node, WriteFilesRequest(files=[ClusterFile.of("../../etc/passwd", b"x")])
        )
    with pytest.raises(ParamError):
        membership.write_files(node, WriteFilesRequest(remove=["node_key"]))
    out = membership.write_files(node, WriteFilesRequest(files=[ClusterFile.of("ca_key", b"k")]))
    assert out.written == ["ca_key"]
    assert stat.S_IMODE(os.stat(node.ca_key).st_mode) == 0o600
    out = membership.write_files(node, WriteFilesRequest(remove=["ca_key", "rapi_users"]))
    assert out.removed == ["ca_key"]


def test_cluster_files_by_role(node: Paths) -> None:
    regular = membership.cluster_files(node, "regular")
    candidate = membership.cluster_files(node, "master-candidate")
    assert node.ca_key not in regular and node.ca_key in candidate
    assert {node.ca_cert, node.crl, node.cluster_conf} <= set(regular)
    assert membership.cluster_files(node, "master") == candidate


def test_leave_drops_identity(master: Paths, node: Paths) -> None:
    token = membership.prepare_join(node, [])
    state = membership.JoinState(node)
    state.node_join_finish(_finish(master, state, token)[0])
    old_key = Path(node.node_key).read_bytes()
    new_token = membership.leave(node)
    assert new_token != token
    assert not membership.is_member(node)
    assert Path(node.node_key).read_bytes() != old_key
    assert membership.read_token(node) == new_token

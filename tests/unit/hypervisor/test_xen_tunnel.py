"""The Xen migration tunnel, for real: TLS sockets on 127.0.0.1, real processes.

Certificates come from ``corral.rpc.tls`` in temporary roots (one cluster CA, a source and a
destination node, plus a foreign CA). There is no Xen on this host, so the receiver argv is a
small Python program standing in for ``xl migrate-receive``: it echoes its stdin back on
stdout while hashing it, reports on stderr and exits with a chosen status. The sender is run
exactly as ``xl migrate -s`` runs it: ``sh -c "exec <sender_command> <host> xl
migrate-receive -p"`` with the token in the environment. The real ``xl migrate`` goes through
the tunnel in the Xen appliance tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.common.paths import Paths
from corral.hypervisor.xen import tunnel
from corral.hypervisor.xen.tunnel import TOKEN_ENV, TunnelListener, receive_flags, sender_command
from tests.unit.rpc.rpc_fakes import make_pki

TOKEN = "s3cret-token"
HOST = "127.0.0.1"

RECEIVER = r"""
import hashlib, os, sys, time
args = sys.argv[1:]
rc = int(args[args.index("--rc") + 1]) if "--rc" in args else 0
mark = args[args.index("--mark") + 1] if "--mark" in args else None
if mark:
    with open(mark + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(mark + ".tmp", mark)
if "--hang" in args:
    time.sleep(600)
flags = [a for a in args if a.startswith("-") and not a.startswith("--")]
out = sys.stdout.buffer
out.write(("READY " + " ".join(flags) + "\n").encode())
out.flush()
digest, n = hashlib.sha256(), 0
while chunk := os.read(0, 65536):
    digest.update(chunk)
    n += len(chunk)
    out.write(chunk)
    out.flush()
out.write(f"\nDONE {n} {digest.hexdigest()}\n".encode())
out.flush()
sys.stderr.write(f"received {n} bytes\n")
sys.exit(rc)
"""


@pytest.fixture
def nodes(tmp_path: Path) -> tuple[Paths, Paths]:
    """(source, destination): two node roots with certificates of one cluster CA."""
    src = make_pki(str(tmp_path / "src"), "xen1", [HOST])
    dst = make_pki(str(tmp_path / "dst"), "xen2", [HOST], ca=src)
    return src, dst


@pytest.fixture
def receiver(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_migrate_receive.py"
    script.write_text(RECEIVER)
    return [sys.executable, str(script)]


@contextlib.contextmanager
def listening(
    dst: Paths, receive_argv: list[str], *, accept_timeout: float = 60.0, io_timeout: float = 60.0
) -> Iterator[TunnelListener]:
    listener = TunnelListener(
        dst,
        host=HOST,
        port=0,
        token=TOKEN,
        receive_argv=receive_argv,
        accept_timeout=accept_timeout,
        io_timeout=io_timeout,
    )
    try:
        listener.start()
        yield listener
    finally:
        listener.close()


def as_xl(
    src: Paths,
    port: int,
    *,
    token: str = TOKEN,
    server_name: str = "xen2",
    remote: str = "xl migrate-receive -p",
) -> subprocess.Popen[bytes]:
    """Start the sender the way ``xl migrate -s <command> pv1 127.0.0.1`` does."""
    command = sender_command(src, port=port, server_name=server_name)
    env = {**os.environ, TOKEN_ENV: token}
    return subprocess.Popen(
        ["sh", "-c", f"exec {command} {HOST} {remote}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


@contextlib.contextmanager
def sender(*args: object, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = as_xl(*args, **kwargs)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)
    return path.read_text()


def test_stream_both_ways_and_exit_status(nodes: tuple[Paths, Paths], receiver: list[str]) -> None:
    src, dst = nodes
    data = os.urandom(6 * 1024 * 1024 + 12345)
    with listening(dst, [*receiver, "--rc", "3"]) as listener:
        with sender(src, listener.port) as proc:
            out, err = proc.communicate(input=data, timeout=120)
        result = listener.wait(30)
    digest = hashlib.sha256(data).hexdigest()
    assert out == b"READY -p\n" + data + f"\nDONE {len(data)} {digest}\n".encode()
    assert proc.returncode == 3, err  # the receiver's status, like ssh reports it
    assert result.rc == 3 and result.error == "" and not result.ok
    assert result.output == f"received {len(data)} bytes\n"
    assert result.bytes_in == len(data)
    assert result.bytes_out == len(out)


def test_success_and_allowed_flags_reach_the_receiver(
    nodes: tuple[Paths, Paths], receiver: list[str]
) -> None:
    src, dst = nodes
    with listening(dst, [*receiver, "-p"]) as listener:
        with sender(src, listener.port, remote="xl -t -vv migrate-receive -e -p") as proc:
            out, err = proc.communicate(input=b"hello", timeout=60)
        result = listener.wait(30)
    # -p is not repeated, -e is added; xl's global -t/-vv are dropped
    assert out.startswith(b"READY -p -e\nhello"), out
    assert proc.returncode == 0, err
    assert result.ok


def test_wrong_token_is_refused_before_anything_runs(
    nodes: tuple[Paths, Paths], receiver: list[str], tmp_path: Path
) -> None:
    src, dst = nodes
    mark = tmp_path / "started"
    with listening(dst, [*receiver, "--mark", str(mark)]) as listener:
        with sender(src, listener.port, token="guessed") as proc:
            out, err = proc.communicate(input=b"x" * 1000, timeout=60)
        result = listener.wait(30)
    assert proc.returncode == tunnel.TUNNEL_FAILED
    assert b"refused: wrong token" in err and out == b""
    assert result.rc is None and "wrong token" in result.error
    assert not mark.exists()


def test_disallowed_remote_command_is_refused(
    nodes: tuple[Paths, Paths], receiver: list[str], tmp_path: Path
) -> None:
    src, dst = nodes
    mark = tmp_path / "started"
    with listening(dst, [*receiver, "--mark", str(mark)]) as listener:
        with sender(src, listener.port, remote="xl migrate-receive -r") as proc:
            _, err = proc.communicate(timeout=60)
        result = listener.wait(30)
    assert proc.returncode == tunnel.TUNNEL_FAILED
    assert b"refused migrate-receive option '-r'" in err
    assert "'-r'" in result.error and result.rc is None
    assert not mark.exists()


def test_client_certificate_of_another_cluster_is_refused(
    nodes: tuple[Paths, Paths], receiver: list[str], tmp_path: Path
) -> None:
    src, dst = nodes
    # A node of another cluster that trusts our CA (so it accepts the destination) but can
    # only present a certificate from its own CA: the destination must refuse it.
    stranger = make_pki(str(tmp_path / "other"), "xen1", [HOST])
    shutil.copy(src.ca_cert, stranger.ca_cert)
    mark = tmp_path / "started"
    with listening(dst, [*receiver, "--mark", str(mark)]) as listener:
        with sender(stranger, listener.port) as proc:
            _, err = proc.communicate(input=b"data", timeout=60)
        result = listener.wait(30)
    assert proc.returncode == tunnel.TUNNEL_FAILED, err
    assert b"corral migration tunnel" in err
    assert result.rc is None and "TLS handshake" in result.error
    assert "certificate verify failed" in result.error
    assert not mark.exists()


def test_sender_refuses_a_destination_of_another_cluster(
    nodes: tuple[Paths, Paths], receiver: list[str], tmp_path: Path
) -> None:
    src, _ = nodes
    impostor = make_pki(str(tmp_path / "other"), "xen2", [HOST])  # right name, its own CA
    mark = tmp_path / "started"
    with listening(impostor, [*receiver, "--mark", str(mark)]) as listener:
        with sender(src, listener.port) as proc:
            _, err = proc.communicate(input=b"data", timeout=60)
        result = listener.wait(30)
    assert proc.returncode == tunnel.TUNNEL_FAILED
    assert b"certificate verify failed" in err
    assert result.rc is None and "TLS handshake" in result.error
    assert not mark.exists()


def test_wrong_destination_name_is_refused_by_the_sender(
    nodes: tuple[Paths, Paths], receiver: list[str], tmp_path: Path
) -> None:
    src, dst = nodes
    mark = tmp_path / "started"
    with listening(dst, [*receiver, "--mark", str(mark)]) as listener:
        with sender(src, listener.port, server_name="xen3") as proc:
            _, err = proc.communicate(timeout=60)
        result = listener.wait(30)
    assert proc.returncode == tunnel.TUNNEL_FAILED
    assert b"cannot connect" in err and b"xen3" in err
    assert result.rc is None and result.error
    assert not mark.exists()


def test_one_connection_only_and_close_kills_the_receiver(
    nodes: tuple[Paths, Paths], receiver: list[str], tmp_path: Path
) -> None:
    src, dst = nodes
    mark = tmp_path / "started"
    with listening(dst, [*receiver, "--mark", str(mark), "--hang"]) as listener:
        with sender(src, listener.port) as proc:
            pid = int(wait_for_file(mark))
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((HOST, listener.port), timeout=5).close()
            with pytest.raises(HypervisorError) as running:
                listener.wait(0.1)
            assert running.value.kind is ErrorKind.TEMP_NO_RESOURCES
            listener.close()
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # killed and reaped
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == tunnel.TUNNEL_FAILED, err
        result = listener.wait(0)
    assert "closed" in result.error and result.rc is not None and result.rc < 0
    listener.close()  # idempotent


def test_receiver_gone_silent_times_out(
    nodes: tuple[Paths, Paths], receiver: list[str], tmp_path: Path
) -> None:
    src, dst = nodes
    mark = tmp_path / "started"
    with listening(dst, [*receiver, "--mark", str(mark), "--hang"], io_timeout=1.0) as listener:
        with sender(src, listener.port) as proc:
            _, err = proc.communicate(timeout=60)
        result = listener.wait(30)
    assert "no data moved" in result.error and result.rc is not None and result.rc < 0
    assert proc.returncode == 128 + 9, err  # killed receiver, reported like a shell does


def test_accept_timeout_closes_the_port(nodes: tuple[Paths, Paths], receiver: list[str]) -> None:
    _, dst = nodes
    with listening(dst, receiver, accept_timeout=0.3) as listener:
        result = listener.wait(30)
        assert result.rc is None and "no migration source connected" in result.error
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, listener.port), timeout=5).close()


def test_busy_port_and_misuse(nodes: tuple[Paths, Paths], receiver: list[str]) -> None:
    _, dst = nodes
    with listening(dst, receiver) as first:
        second = TunnelListener(dst, host=HOST, port=first.port, token=TOKEN, receive_argv=receiver)
        with pytest.raises(HypervisorError) as busy:
            second.start()
        assert busy.value.kind is ErrorKind.EXISTS and str(first.port) in str(busy.value)
        second.close()
        with pytest.raises(HypervisorError) as again:
            first.start()
        assert again.value.kind is ErrorKind.WRONG_STATE
    idle = TunnelListener(dst, host=HOST, port=0, token=TOKEN, receive_argv=receiver)
    with pytest.raises(HypervisorError) as not_started:
        idle.wait(0)
    assert not_started.value.kind is ErrorKind.WRONG_STATE
    with pytest.raises(HypervisorError):
        TunnelListener(dst, host=HOST, port=0, token="", receive_argv=receiver)


def test_sender_without_token_or_listener_fails_with_255(nodes: tuple[Paths, Paths]) -> None:
    src, _ = nodes
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    with sender(src, port, token="") as proc:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 255 and TOKEN_ENV.encode() in err
    with sender(src, port) as proc:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 255 and b"cannot connect" in err


def test_sender_command_is_a_quoted_command_without_the_token(tmp_path: Path) -> None:
    paths = Paths(str(tmp_path / "a root with spaces"))
    command = sender_command(paths, port=8002, server_name="xen2")
    words = shlex.split(command)
    assert words[:3] == [sys.executable, "-m", "corral.hypervisor.xen.tunnel"]
    assert words[3:] == ["--root", paths.root, "--port", "8002", "--server-name", "xen2"]
    assert TOKEN not in command


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        (["xl", "migrate-receive"], []),
        (["xl", "migrate-receive", "-p"], ["-p"]),
        (["xl", "-t", "-T", "-vvv", "migrate-receive", "-e", "-d", "-p"], ["-e", "-d", "-p"]),
        (["xl", "migrate-receive", "-T", "-p", "-p"], ["-p"]),
    ],
)
def test_receive_flags_allowed(args: list[str], flags: list[str]) -> None:
    assert receive_flags(args) == flags


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["rm", "-rf", "/"],
        ["xl", "destroy", "pv1"],
        ["xl", "-f", "migrate-receive"],
        ["xl", "migrate-receive", "-r"],
        ["xl", "migrate-receive", "--colo"],
        ["xl", "migrate-receive", "-p", "extra"],
    ],
)
def test_receive_flags_refused(args: list[str]) -> None:
    with pytest.raises(HypervisorError) as err:
        receive_flags(args)
    assert err.value.kind is ErrorKind.INVALID

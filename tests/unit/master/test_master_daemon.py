"""corral-master helpers: the root-only socket, refusing to start without a cluster."""

from __future__ import annotations

import logging
import os
import socket
import stat

import pytest

from corral.common.errors import CorralError
from corral.master import daemon


def test_unix_socket_is_root_only_and_replaces_a_stale_one(tmp_path):
    path = str(tmp_path / "run" / "master.sock")
    first = daemon._listen_unix(path)
    first.close()  # a dead master leaves its socket file behind
    assert os.path.exists(path)
    sock = daemon._listen_unix(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        client.close()
    finally:
        sock.close()
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) & 0o700 == 0o700


def test_unix_socket_refuses_to_replace_a_file(tmp_path):
    path = tmp_path / "master.sock"
    path.write_text("not a socket")
    with pytest.raises(CorralError):
        daemon._listen_unix(str(path))
    assert path.read_text() == "not a socket"


def test_tcp_listen_error_names_the_address():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(CorralError) as err:
            daemon._listen_tcp("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(err.value)


def test_main_without_cluster_fails_cleanly(tmp_path, capsys):
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        assert daemon.main(["--root", str(tmp_path), "--foreground"]) == 1
    finally:  # main() installs the daemon's log handler: take it away again
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
    assert "no cluster is initialised" in capsys.readouterr().err

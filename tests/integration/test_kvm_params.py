"""KVM hypervisor parameters on real QEMU guests (TCG here; KVM where usable).

The guest is Corral's busybox OS kernel + initrd (no root device; it prints
``CORRAL-GUEST-UP <hostname>`` on its serial console and runs a shell there). What QEMU
made of the parameters is checked through QMP (``query-pci``, ``query-block``,
``query-spice``) and from inside the guest (``/sys/bus/pci``), the unprivileged user through
``/proc/<pid>/status``, VNC through a real RFB handshake with the password.

Safety: one guest at a time; every QEMU is killed by pid in teardown and registered with the
session's watchdog (tests/integration/conftest.py). A test that creates a system user or
changes owners undoes it in its fixture's teardown.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from corral.common.errors import ErrorKind, HypervisorError
from corral.common.paths import Paths
from corral.common.runcmd import run
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.hypervisor.kvm.cmdline import argv_names_instance
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.probe import QemuProber
from corral.hypervisor.kvm.process import pid_alive, pid_cmdline, read_pidfile
from corral.hypervisor.kvm.runtime import InstanceLayout
from tests.conftest import require_root, require_tool, unavailable
from tests.integration.harness import free_port
from tests.unit.hypervisor.test_kvm_probe import caps_of

pytestmark = pytest.mark.qemu

QEMU = "/usr/bin/qemu-system-x86_64"
BOOT_TIMEOUT = 90.0  # UEFI under TCG on a busy machine
TEST_USER = "corral-test-kvm"


class Node:
    """One test's node root, driver and guest bookkeeping."""

    def __init__(self, root: str, kernel: Path, reaper: Path) -> None:
        self.root = root
        self.paths = Paths(root)
        self.kernel = kernel
        self.reaper = reaper
        self.kvm = Kvm.from_paths(self.paths)
        os.makedirs(self.paths.data_dir, exist_ok=True)

    def spec(self, name: str, *, network_port: int | None = None, **hv: object) -> InstanceSpec:
        params: dict[str, object] = {
            "kernel_path": str(self.kernel / "vmlinuz"),
            "initrd_path": str(self.kernel / "initrd.img"),
            "root_path": "",
            "kernel_args": f"corral.hostname={name} panic=-1",
        }
        params.update(hv)
        return InstanceSpec(
            name=name,
            uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.params.corral.test")),
            hypervisor="kvm",
            hvparams=params,
            memory=128,
            min_memory=64,
            vcpus=1,
            network_port=network_port,
        )

    def layout(self, name: str) -> InstanceLayout:
        return self.kvm._layout(name)

    def start(
        self, spec: InstanceSpec, disks: list[AttachedDisk] | None = None, *, paused: bool = False
    ) -> int:
        try:
            self.kvm.start(spec, disks or [], paused=paused)
        finally:
            pid = read_pidfile(self.layout(spec.name).pidfile)
            if pid:
                with open(self.reaper, "a") as fh:
                    fh.write(f"{pid}\n")
        pid = read_pidfile(self.layout(spec.name).pidfile)
        assert pid
        return pid

    def serial(self, name: str) -> str:
        try:
            return Path(self.layout(name).serial_log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, name: str, pattern: str, *, timeout: float = BOOT_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.serial(name)
            if re.search(pattern, text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on {name}'s console; tail:\n{text[-1500:]}")

    def guest_command(self, name: str, line: str, expect: str) -> str:
        """Type ``line`` on the guest's serial console; the output once ``expect`` showed."""
        start = len(self.serial(name))
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.layout(name).serial_socket)
            s.sendall(line.encode() + b"\n")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                text = self.serial(name)[start:]
                if re.search(expect, text):
                    return text
                time.sleep(0.2)
        raise AssertionError(f"{expect!r} not seen after {line!r}: {text[-1000:]}")

    def qmp(self, name: str, command: str, **args: Any) -> Any:
        async def go() -> Any:
            client = QMPClient(name)
            await client.connect(self.layout(name).qmp_socket)
            try:
                return await client.execute(command, args or None)
            finally:
                await client.disconnect()

        return asyncio.run(asyncio.wait_for(go(), 15))

    def kill_all(self) -> None:
        run_dir = self.kvm.run_dir
        for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
            pid = read_pidfile(os.path.join(run_dir, name, "qemu.pid"))
            if pid and pid_alive(pid) and argv_names_instance(pid_cmdline(pid) or [], name):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def node(guest_kernel, guest_reaper, request) -> Iterator[Node]:
    root = tempfile.mkdtemp(prefix="crlp", dir="/tmp")  # short: UNIX socket paths
    os.chmod(root, 0o755)  # unprivileged QEMU must reach the kernel and disks under it
    failed_before = request.session.testsfailed
    n = Node(root, guest_kernel, guest_reaper)
    try:
        yield n
    finally:
        n.kill_all()
        for name in os.listdir(n.kvm.run_dir) if os.path.isdir(n.kvm.run_dir) else []:
            if not name.startswith("."):
                n.kvm._cleanup_files(n.layout(name), n.kvm._load(n.layout(name)))
        if request.session.testsfailed > failed_before:
            print(f"\nkept logs of failed test in {root}/var/log/corral/kvm", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def raw_disk(node: Node, name: str, size_mib: int = 16) -> AttachedDisk:
    path = os.path.join(node.root, f"{name}.img")
    with open(path, "wb") as fh:
        fh.truncate(size_mib * 1024 * 1024)
    os.chmod(path, 0o600)
    return AttachedDisk(index=0, uuid=f"{name}-disk0", path=path, format="raw")


def pci_ids(node: Node, name: str) -> set[tuple[int, int]]:
    ids = set()
    for bus in node.qmp(name, "query-pci"):
        stack = list(bus["devices"])
        while stack:
            dev = stack.pop()
            ids.add((dev["id"]["vendor"], dev["id"]["device"]))
            stack += (dev.get("pci_bridge") or {}).get("devices", [])
    return ids


# --- the probe against the real binary -----------------------------------------------------------


def test_probing_the_installed_qemu_matches_the_captured_outputs():
    require_tool("qemu-system-x86_64")
    prober = QemuProber(run)
    caps = prober.caps(QEMU)
    captured = caps_of("7.2", QEMU)
    if caps.version != captured.version:
        unavailable(
            f"this machine's QEMU is {caps.version}, the capture is {captured.version}: "
            "capture tests/data/qemu/<version>/ again (see its README)"
        )
    assert caps == captured
    curl_module = any(
        os.path.exists(os.path.join(d, "block-curl.so"))
        for d in ("/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib/qemu")
    )
    assert prober.has_block_driver(QEMU, "https") is curl_module


# --- devices -------------------------------------------------------------------------------------


def test_q35_scsi_disk_e1000_usb_and_sound(node):
    spec = node.spec(
        "q1",
        machine_version="q35",
        disk_type="scsi",
        nic_type="e1000",
        usb_devices="usb-tablet",
        soundhw="hda",
        cpu_cores=2,
    )
    spec = spec.model_copy(
        update={"vcpus": 2, "nics": [NicSpec(index=0, uuid="q1-nic0", mac="aa:00:00:00:10:01")]}
    )
    disk = raw_disk(node, "q1")
    node.start(spec, [disk])
    node.wait_serial("q1", r"CORRAL-GUEST-UP q1")
    runtime = node.kvm._load(node.layout("q1"))
    assert runtime is not None and runtime.machine == "pc-q35-7.2"  # the alias, resolved
    # QEMU's view: the devices the parameters asked for
    ids = pci_ids(node, "q1")
    assert (0x8086, 0x100E) in ids  # e1000
    assert (0x1AF4, 0x1048) in ids or (0x1AF4, 0x1004) in ids  # virtio-scsi
    assert (0x1B36, 0x000D) in ids  # qemu-xhci
    assert (0x8086, 0x2668) in ids  # intel-hda
    assert (0x8086, 0x29C0) in ids  # the q35 host bridge
    block = {b.get("qdev"): b for b in node.qmp("q1", "query-block")}
    disk_dev = next(b for q, b in block.items() if q and "disk0" in q)
    assert disk_dev["inserted"]["file"] == disk.path
    # the guest's view: the same PCI functions, and two CPUs
    out = node.guest_command("q1", "cat /sys/bus/pci/devices/*/device; nproc", r"\n2\r?\n")
    assert "0x100e" in out and "0x2668" in out and "0x000d" in out
    node.kvm.stop("q1", timeout=0)


def test_cdrom_image_attached_and_spice_listening(node):
    require_tool("genisoimage")
    src = os.path.join(node.root, "iso-src")
    os.makedirs(src)
    Path(src, "hello.txt").write_text("corral\n")
    iso = os.path.join(node.root, "test.iso")
    subprocess.run(
        ["genisoimage", "-quiet", "-V", "CORRALTEST", "-o", iso, src], check=True, timeout=60
    )
    port = free_port("127.0.0.1")
    spec = node.spec(
        "cd1",
        network_port=port,
        cdrom_image_path=iso,
        cdrom2_image_path=iso,
        cdrom_disk_type="ide",
        spice_bind="127.0.0.1",
    )
    node.start(spec)
    node.wait_serial("cd1", r"CORRAL-GUEST-UP cd1")
    block = {b.get("qdev"): b for b in node.qmp("cd1", "query-block")}
    cdroms = {q: b for q, b in block.items() if q and "cdrom" in q}
    assert len(cdroms) == 2
    for cdrom in cdroms.values():
        assert cdrom["removable"] is True and cdrom["inserted"]["ro"] is True
        assert cdrom["inserted"]["file"] == iso
    spice = node.qmp("cd1", "query-spice")
    assert spice["enabled"] is True and spice["port"] == port and spice["auth"] == "none"
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    console = node.kvm.console(spec, node_host="127.0.0.1")
    assert console.details["spice"] == {
        "host": "127.0.0.1",
        "port": port,
        "password": False,
        "tls": False,
    }
    node.kvm.stop("cd1", timeout=0)


def test_cdrom_url_without_curl_is_refused_before_qemu_runs(node):
    if QemuProber(run).has_block_driver(QEMU, "https"):
        pytest.skip("this QEMU has the curl block driver")
    spec = node.spec("url1", cdrom_image_path="https://127.0.0.1:9/none.iso")
    with pytest.raises(HypervisorError) as err:
        node.kvm.start(spec, [])
    assert err.value.kind is ErrorKind.INVALID
    assert "cdrom_image_path" in err.value.fields["problems"]
    assert "qemu-block-extra" in err.value.fields["problems"]["cdrom_image_path"]
    assert node.kvm.list_instances() == []


# --- VNC with a password -------------------------------------------------------------------------


def _vnc_des_key(password: str) -> bytes:
    # VNC authentication uses DES with the bits of each key byte reversed
    raw = password.encode()[:8].ljust(8, b"\0")
    return bytes(int(f"{b:08b}"[::-1], 2) for b in raw)


def vnc_authenticate(port: int, password: str) -> tuple[list[int], int]:
    """RFB 3.8 handshake with VNC authentication: (offered security types, result)."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        version = s.recv(12)
        assert version.startswith(b"RFB 003.")
        s.sendall(b"RFB 003.008\n")
        count = s.recv(1)[0]
        types = list(s.recv(count))
        if 2 not in types:
            return types, -1
        s.sendall(bytes([2]))
        challenge = b""
        while len(challenge) < 16:
            challenge += s.recv(16 - len(challenge))
        key = _vnc_des_key(password)
        enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # RFB's DES
        s.sendall(enc.update(challenge) + enc.finalize())
        (result,) = struct.unpack(">I", s.recv(4))
        return types, result


def test_vnc_with_a_password_file_requires_vnc_authentication(node):
    pw = os.path.join(node.root, "vnc-password")
    Path(pw).write_text("c0rral!\n")
    port = free_port("127.0.0.1")
    spec = node.spec(
        "vnc1", network_port=port, vnc_bind_address="127.0.0.1", vnc_password_file=pw, keymap="de"
    )
    node.start(spec)
    types, result = vnc_authenticate(port, "c0rral!")
    assert types == [2]  # VNC authentication, and nothing without a password
    assert result == 0
    _, wrong = vnc_authenticate(port, "wrong")
    assert wrong == 1
    argv = " ".join(pid_cmdline(read_pidfile(node.layout("vnc1").pidfile) or 0) or [])
    assert "c0rral" not in argv and "password-secret=vnc-secret0" in argv
    console = node.kvm.console(spec, node_host="127.0.0.1")
    assert console.details["vnc"] == {
        "host": "127.0.0.1",
        "port": port,
        "display": port - 5900,
        "password": True,
        "tls": False,
    }
    node.kvm.stop("vnc1", timeout=0)


# --- UEFI ----------------------------------------------------------------------------------------


def test_uefi_boot_with_a_per_instance_variables_store(node):
    if not os.path.isfile("/usr/share/OVMF/OVMF_CODE_4M.fd"):
        unavailable("ovmf is not installed")
    spec = node.spec("uefi1", firmware="uefi").model_copy(update={"memory": 256})
    node.start(spec)
    node.wait_serial("uefi1", r"CORRAL-GUEST-UP uefi1")
    store = os.path.join(node.paths.data_dir, "kvm-nvram", f"{spec.uuid}.fd")
    assert os.path.isfile(store)
    assert os.path.getsize(store) == os.path.getsize("/usr/share/OVMF/OVMF_VARS_4M.fd")
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    efi = node.guest_command("uefi1", "ls -d /sys/firmware/efi && echo EFI-OK", r"EFI-OK")
    assert "No such file" not in efi
    node.kvm.stop("uefi1", timeout=0)
    assert os.path.isfile(store)  # kept after the stop, for the next start


# --- security ------------------------------------------------------------------------------------


@pytest.fixture
def system_user() -> Iterator[str]:
    """A system user for QEMU (``useradd --system``), deleted afterwards."""
    require_root()
    require_tool("useradd", "userdel")
    subprocess.run(["userdel", TEST_USER], capture_output=True, check=False, timeout=30)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
        check=True,
        timeout=30,
    )
    try:
        yield TEST_USER
    finally:
        subprocess.run(["userdel", TEST_USER], capture_output=True, check=False, timeout=30)


def status_ids(pid: int) -> dict[str, list[int]]:
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return {k: [int(x) for x in fields[k].split()] for k in ("Uid", "Gid")}


def assert_private(path: str) -> None:
    """Run dir 0700; every file and socket in it readable by its owner only."""
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    for entry in os.scandir(path):
        mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        if entry.is_dir(follow_symlinks=False):
            continue
        assert mode & 0o077 == 0, f"{entry.path} has mode {oct(mode)}"


def test_guest_runs_as_the_security_domain_user(system_user, node):
    # (system_user first: its userdel must run after node's teardown killed QEMU)
    import pwd

    user = pwd.getpwnam(system_user)
    pw = os.path.join(node.root, "vnc-password")
    Path(pw).write_text("secret\n")
    spec = node.spec(
        "usr1",
        security_model="user",
        security_domain=system_user,
        vnc_bind_address="127.0.0.1",
        vnc_password_file=pw,
        network_port=free_port("127.0.0.1"),
    )
    disk = raw_disk(node, "usr1")
    pid = node.start(spec, [disk])
    node.wait_serial("usr1", r"CORRAL-GUEST-UP usr1")
    ids = status_ids(pid)
    assert ids["Uid"] == [user.pw_uid] * 4 and ids["Gid"] == [user.pw_gid] * 4
    layout = node.layout("usr1")
    assert os.stat(layout.dir).st_uid == user.pw_uid
    assert os.stat(disk.path).st_uid == user.pw_uid  # handed over while it runs
    assert_private(layout.dir)
    assert stat.S_IMODE(os.stat(layout.serial_log).st_mode) == 0o600
    node.kvm.stop("usr1", timeout=10)
    assert os.stat(disk.path).st_uid == 0  # given back


def test_guest_from_the_uid_pool_chrooted(node):
    require_root()
    pool_uids = [27001, 27002]
    with open(os.path.join(node.paths.data_dir, "kvm-uid-pool"), "w") as fh:
        fh.write("# test pool\n27001-27002\n")
    spec = node.spec("pool1", security_model="pool", use_chroot=True)
    disk = raw_disk(node, "pool1")
    pid = node.start(spec, [disk])
    node.wait_serial("pool1", r"CORRAL-GUEST-UP pool1")
    uid = status_ids(pid)["Uid"][0]
    assert uid in pool_uids and status_ids(pid)["Uid"] == [uid] * 4
    assert os.readlink(f"/proc/{pid}/root") == os.path.join(node.layout("pool1").dir, "chroot")
    assert node.kvm.uid_pool().owner(uid) == "pool1"
    runtime = node.kvm._load(node.layout("pool1"))
    assert runtime is not None and runtime.security["uid"] == uid
    assert_private(node.layout("pool1").dir)
    # the instance keeps working through QMP after dropping privileges
    info = node.kvm.instance_info("pool1")
    assert info is not None and info.state.value == "running"
    node.kvm.stop("pool1", timeout=10)
    assert node.kvm.uid_pool().owner(uid) is None  # released at stop
    assert os.stat(disk.path).st_uid == 0


# --- TLS for the graphical consoles --------------------------------------------------------------


def write_x509_dir(directory: str) -> None:
    """A CA and a server certificate in QEMU's x509 directory layout (EC P-256, 1 day)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca-cert.pem": cert("corral-test-ca", ca_key, "corral-test-ca", ca_key, True),
        "server-cert.pem": cert("127.0.0.1", server_key, "corral-test-ca", ca_key, False),
    }
    for name, certificate in files.items():
        Path(directory, name).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    Path(directory, "server-key.pem").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def test_vnc_with_tls_offers_only_vencrypt(node):
    x509_dir = os.path.join(node.root, "vnc-x509")
    write_x509_dir(x509_dir)
    port = free_port("127.0.0.1")
    spec = node.spec(
        "tls1", network_port=port, vnc_bind_address="127.0.0.1", vnc_tls=True,
        vnc_x509_path=x509_dir,
    )  # fmt: skip
    node.start(spec, paused=True)  # the console works before the guest runs
    types, _ = vnc_authenticate(port, "")
    assert types == [19]  # VeNCrypt: TLS before anything else
    assert node.qmp("tls1", "query-vnc")["auth"] == "vencrypt+x509+none"  # TLS, no password
    node.kvm.stop("tls1", timeout=0)


def test_spice_with_tls_and_a_password(node):
    x509_dir = os.path.join(node.root, "spice-x509")
    write_x509_dir(x509_dir)
    pw = os.path.join(node.root, "spice-password")
    Path(pw).write_text("Sp1ce-pw\n")
    port = free_port("127.0.0.1")
    spec = node.spec(
        "sp1", network_port=port, spice_bind="127.0.0.1", spice_use_tls=True,
        spice_x509_path=x509_dir, spice_password_file=pw,
    )  # fmt: skip
    pid = node.start(spec, paused=True)
    spice = node.qmp("sp1", "query-spice")
    assert spice["enabled"] is True and spice["auth"] == "spice"
    assert spice["tls-port"] == port and "port" not in spice
    assert "Sp1ce-pw" not in " ".join(pid_cmdline(pid) or [])
    node.kvm.stop("sp1", timeout=0)

"""Unit tests of the Xen driver (xen-pvm/xen-hvm) and its node glue.

A fake ``xl`` (:class:`FakeXl`, a runner that keeps a table of domains and answers in xl's
real formats and with its real error texts, see tests/data/xen/) stands in for the toolstack:
this host cannot run Xen, which needs its own hypervisor under a dom0 kernel. The real ``xl``
is exercised by tests/integration/test_xen_pv.py inside the Xen appliance. The migration
tests also replace the TLS tunnel listener by a stub (the fake xl does not run the sender);
the tunnel itself has its own tests (test_xen_tunnel.py) and runs for real in the appliance.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.common.paths import Paths
from corral.common.runcmd import CmdResult
from corral.hypervisor.base import AttachedDisk, InstanceSpec, InstanceState, NicSpec
from corral.hypervisor.registry import HYPERVISORS, get_hypervisor
from corral.hypervisor.xen import migration as xen_migration
from corral.hypervisor.xen.driver import XenHvm, XenPvm
from corral.hypervisor.xen.tunnel import TOKEN_ENV, TunnelResult

DATA = Path(__file__).resolve().parents[2] / "data" / "xen"
HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


# --- the fake toolstack ---------------------------------------------------------------------


@dataclass
class Dom:
    name: str
    domid: int
    memory: int
    maxmem: int
    vcpus: int
    flags: str = "-b----"
    cfg: str = ""
    target: int | None = None
    vanish_in: int | None = None  # xl list calls until a dying domain is gone
    shutdown_in: int | None = None  # xl list calls until a shutdown request is honoured
    pinned: dict[str, str] = field(default_factory=dict)


class FakeXl:
    """A runner that plays ``xl`` over an in-memory domain table (see the module docstring).

    Knobs: ``guest_obeys`` (shutdown honoured after ``shutdown_delay`` lists), ``dying_lists``
    (lists a destroyed domain stays visible as dying), ``balloon_steps`` (lists until a mem-set
    is reached; None: never), ``create_error`` / ``create_leaves_domain``, ``save_error``,
    ``migrate_error``.
    """

    def __init__(self) -> None:
        self.doms: dict[str, Dom] = {"Domain-0": Dom("Domain-0", 0, 512, 512, 2, "r-----")}
        self.next_id = 1
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str] | None] = []
        self.guest_obeys = True
        self.shutdown_delay = 2
        self.dying_lists = 2
        self.balloon_steps: int | None = 1
        self.create_error = ""
        self.create_leaves_domain = False
        self.save_error = ""
        self.migrate_error = ""
        self.shutdown_refusals = 0

    # runner protocol
    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        cwd: str | None = None,
        c_locale: bool = False,
    ) -> CmdResult:
        assert argv[0] == "xl", argv
        args = list(argv[1:])
        self.calls.append(args)
        self.envs.append(env)
        out, err, rc = getattr(self, "_" + args[0].replace("-", "_"))(args[1:])
        return CmdResult(tuple(argv), rc, out, err)

    def commands(self) -> list[str]:
        return [c[0] for c in self.calls]

    @staticmethod
    def _missing(name: str) -> tuple[str, str, int]:
        return "", f"{name} is an invalid domain identifier (rc=-6)\n", 1

    def _tick(self) -> None:
        for dom in list(self.doms.values()):
            if dom.vanish_in is not None:
                dom.vanish_in -= 1
                if dom.vanish_in < 0:
                    del self.doms[dom.name]
                    continue
            if dom.shutdown_in is not None:
                dom.shutdown_in -= 1
                if dom.shutdown_in < 0:
                    dom.flags, dom.shutdown_in = "---s--", None
            if dom.target is not None and self.balloon_steps is not None:
                self.balloon_steps -= 1
                if self.balloon_steps <= 0:
                    dom.memory, dom.target = dom.target, None

    def _line(self, d: Dom) -> str:
        return f"{d.name:<40}{d.domid:>5}{d.memory:>6}{d.vcpus:>6}     {d.flags}{1.5:>12.1f}"

    def _list(self, args: list[str]) -> tuple[str, str, int]:
        self._tick()
        if args and args[0] == "-l":
            d = self.doms.get(args[1])
            if d is None:
                return self._missing(args[1])
            entry = {
                "domid": d.domid,
                "config": {
                    "c_info": {"type": "pv", "name": d.name, "uuid": "u"},
                    "b_info": {
                        "max_vcpus": d.vcpus,
                        "max_memkb": d.maxmem * 1024,
                        "target_memkb": d.memory * 1024,
                    },
                    "disks": [],
                    "nics": [],
                },
            }
            return json.dumps([entry], indent=4) + "\n", "", 0
        if args:
            d = self.doms.get(args[0])
            return (HEADER + "\n" + self._line(d) + "\n", "", 0) if d else self._missing(args[0])
        lines = [HEADER] + [self._line(d) for d in self.doms.values()]
        return "\n".join(lines) + "\n", "", 0

    def _info(self, args: list[str]) -> tuple[str, str, int]:
        return (DATA / "xl_info.txt").read_text(), "", 0

    def _new(self, cfg: str, flags: str) -> Dom:
        text = Path(cfg).read_text()
        name = re.search(r'^name = "([^"]+)"', text, re.M)
        memory = re.search(r"^memory = (\d+)", text, re.M)
        maxmem = re.search(r"^maxmem = (\d+)", text, re.M)
        vcpus = re.search(r"^vcpus = (\d+)", text, re.M)
        assert name and memory and maxmem and vcpus, text
        dom = Dom(
            name.group(1),
            self.next_id,
            int(memory.group(1)),
            int(maxmem.group(1)),
            int(vcpus.group(1)),
            flags,
            cfg=text,
        )
        self.next_id += 1
        return dom

    def _create(self, args: list[str]) -> tuple[str, str, int]:
        paused = "-p" in args
        cfg = args[-1]
        dom = self._new(cfg, "--p---" if paused else "-b----")
        head = f"Parsing config from {cfg}\n"
        if dom.name in self.doms:
            captured = (DATA / "xl_create_same_name_too_soon_error.txt").read_text()
            return "", head + captured.replace('"pv1"', f'"{dom.name}"'), 3
        if self.create_error:
            if self.create_leaves_domain:
                dom.flags = "--p---"
                self.doms[dom.name] = dom
            return "", head + self.create_error, 3
        self.doms[dom.name] = dom
        return "", head, 0

    def _shutdown(self, args: list[str]) -> tuple[str, str, int]:
        d = self.doms.get(args[-1])
        if d is None:
            return self._missing(args[-1])
        if self.shutdown_refusals > 0:
            self.shutdown_refusals -= 1
            return "", "PV control interface not available: xl shutdown -F needed\n", 1
        if self.guest_obeys:
            d.shutdown_in = self.shutdown_delay
        return f"Shutting down domain {d.domid}\n", "", 0

    def _destroy(self, args: list[str]) -> tuple[str, str, int]:
        d = self.doms.get(args[-1])
        if d is None:
            return self._missing(args[-1])
        d.flags, d.vanish_in = "-----d", self.dying_lists
        return "", "", 0

    def _reboot(self, args: list[str]) -> tuple[str, str, int]:
        return ("", "", 0) if args[-1] in self.doms else self._missing(args[-1])

    def _mem_set(self, args: list[str]) -> tuple[str, str, int]:
        d = self.doms[args[0]]
        d.target = int(args[1].rstrip("m"))
        return "", "", 0

    def _vcpu_pin(self, args: list[str]) -> tuple[str, str, int]:
        self.doms[args[0]].pinned[args[1]] = args[2]
        return "", "", 0

    def _pause(self, args: list[str]) -> tuple[str, str, int]:
        d = self.doms[args[0]]
        d.flags = d.flags[:2] + "p" + d.flags[3:]
        return "", "", 0

    def _unpause(self, args: list[str]) -> tuple[str, str, int]:
        d = self.doms[args[0]]
        d.flags = d.flags[:2] + "-" + d.flags[3:]
        return "", "", 0

    def _rename(self, args: list[str]) -> tuple[str, str, int]:
        d = self.doms.pop(args[0])
        d.name = args[1]
        self.doms[d.name] = d
        return "", "", 0

    def _save(self, args: list[str]) -> tuple[str, str, int]:
        name, path = args
        Path(path).write_bytes(b"partial")
        if self.save_error:
            return "", self.save_error, 1
        Path(path).write_bytes(b"Xen saved domain, xl format\n")
        self.doms[name].flags, self.doms[name].vanish_in = "-----d", self.dying_lists
        return (DATA / "xl_save.txt").read_text(), "", 0

    def _restore(self, args: list[str]) -> tuple[str, str, int]:
        cfg, state = args[-2], args[-1]
        assert Path(state).read_bytes().startswith(b"Xen saved domain")
        dom = self._new(cfg, "-b----")
        self.doms[dom.name] = dom
        return (DATA / "xl_restore.txt").read_text(), "", 0

    def _migrate(self, args: list[str]) -> tuple[str, str, int]:
        # xl migrate -s CMD -p -C CFG NAME HOST; a migration to this very host, as xl does it
        name = args[-2]
        if self.migrate_error:
            return "", self.migrate_error, 1
        src = self.doms.pop(name)
        src.name = name + "--migratedaway"
        self.doms[src.name] = src
        target = Dom(name + "--incoming", self.next_id, src.memory, src.maxmem, src.vcpus, "--p---")
        self.next_id += 1
        self.doms[target.name] = target
        time.sleep(0.05)
        del self.doms[target.name]
        target.name = name
        self.doms[name] = target
        del self.doms[src.name]
        return "", (DATA / "xl_migrate.txt").read_text(), 0


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(str(tmp_path / "root"))


@pytest.fixture
def fake() -> FakeXl:
    return FakeXl()


@pytest.fixture
def pv(paths: Paths, fake: FakeXl) -> XenPvm:
    return XenPvm(
        paths.hv_run_dir("xen-pvm"),
        paths=paths,
        runner=fake,
        poll=0.001,
        gone_timeout=2.0,
        balloon_timeout=0.3,
    )


def make_spec(name: str = "g1", hypervisor: str = "xen-pvm", **hv: Any) -> InstanceSpec:
    params: dict[str, Any] = {"kernel_path": "/boot/vmlinuz", "root_path": "/dev/xvda"}
    if hypervisor == "xen-hvm":
        params = {}
    params.update(hv)
    return InstanceSpec(
        name=name,
        uuid="0d2f7c8e-1111-4222-8333-44445555" + "6666",
        hypervisor=hypervisor,
        hvparams=params,
        memory=128,
        min_memory=64,
        vcpus=2,
        nics=[NicSpec(index=0, uuid="n0", mac="aa:00:00:11:22:33", link="xenbr0")],
        network_port=11000 if hypervisor == "xen-hvm" else None,
    )


def disks(tmp_path: Path) -> list[AttachedDisk]:
    image = tmp_path / "disk0.img"
    image.write_bytes(b"\0" * 512)
    return [AttachedDisk(index=0, uuid="d0", path=str(image), file_driver="loop")]


# --- registry, params ------------------------------------------------------------------------


def test_registered_with_shared_base_and_capabilities(paths: Paths) -> None:
    assert HYPERVISORS["xen-pvm"] is XenPvm and HYPERVISORS["xen-hvm"] is XenHvm
    drv = get_hypervisor("xen-hvm", paths)
    assert isinstance(drv, XenHvm) and drv.paths == paths
    assert drv.run_dir == paths.hv_run_dir("xen-hvm")
    caps = XenPvm.CAPABILITIES
    assert caps.live_migration and caps.balloon and caps.pause and caps.serial_console
    assert not caps.hotplug_disk and not caps.hotplug_nic


def test_validate_params_names_missing_files_and_xl(
    pv: XenPvm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ParamError) as err:
        pv.validate_params({"kernel_path": str(tmp_path / "nope"), "initrd_path": ""})
    assert set(err.value.problems) == {"kernel_path", "xen_cmd"}
    assert "does not exist on this node" in err.value.problems["kernel_path"]
    # with a kernel present and an xl in PATH nothing is left to complain about
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("k")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "xl").write_text("#!/bin/sh\n")
    (bindir / "xl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    pv.validate_params({"kernel_path": str(kernel)})
    # a bootloader makes kernel_path irrelevant, but the bootloader must exist
    loader = {"kernel_path": str(tmp_path / "nope"), "use_bootloader": True}
    with pytest.raises(ParamError) as err:
        pv.validate_params({**loader, "bootloader_path": str(tmp_path / "pygrub")})
    assert set(err.value.problems) == {"bootloader_path"}
    pv.validate_params({**loader, "bootloader_path": str(kernel)})


# --- start / stop ----------------------------------------------------------------------------


def test_start_writes_cfg_and_lists_own_domains_only(
    pv: XenPvm, fake: FakeXl, tmp_path: Path
) -> None:
    pv.start(make_spec(), disks(tmp_path), paused=True)
    cfg = Path(pv.cfg_path("g1"))
    assert cfg.is_file() and oct(cfg.stat().st_mode & 0o777) == "0o600"
    text = cfg.read_text()
    assert 'name = "g1"' in text and "file:" in text and "bridge=xenbr0" in text
    assert fake.calls[-1] == ["create", "-p", str(cfg)]
    # a domain started by hand is not this driver's
    fake.doms["other"] = Dom("other", 42, 64, 64, 1)
    assert pv.list_instances() == ["g1"]
    infos = pv.all_instances_info()
    assert [i.name for i in infos] == ["g1"]
    assert infos[0].state == InstanceState.PAUSED
    assert infos[0].details["domid"] == 1 and infos[0].vcpus == 2 and infos[0].memory == 128
    assert pv.instance_info("other") is None
    with pytest.raises(HypervisorError) as err:
        pv.start(make_spec(), disks(tmp_path))
    assert err.value.kind == ErrorKind.WRONG_STATE


def test_failed_create_removes_cfg_and_half_domain_and_names_xl_message(
    pv: XenPvm, fake: FakeXl, tmp_path: Path
) -> None:
    fake.create_error = (
        "libxl: error: libxl_dm.c:3173:device_model_spawn_outcome: Domain 1:domain 1 device "
        "model: spawn failed (rc=-3)\n"
    )
    fake.create_leaves_domain = True
    with pytest.raises(HypervisorError) as err:
        pv.start(make_spec(), disks(tmp_path))
    assert "device model: spawn failed" in str(err.value)
    assert not os.path.exists(pv.cfg_path("g1"))
    assert not os.path.exists(pv.runtime_path("g1"))
    assert "destroy" in fake.commands()
    assert "g1" not in fake.doms  # the half-created domain was destroyed and waited for


def test_name_in_use_is_not_destroyed(pv: XenPvm, fake: FakeXl, tmp_path: Path) -> None:
    fake.doms["g1"] = Dom("g1", 7, 64, 64, 1)
    # a domain of that name appears between our check and the create (a race)
    real_domain = pv._domain
    pv._domain = lambda name: None  # type: ignore[method-assign]
    try:
        with pytest.raises(HypervisorError) as err:
            pv.start(make_spec(), disks(tmp_path))
    finally:
        pv._domain = real_domain  # type: ignore[method-assign]
    assert err.value.kind == ErrorKind.EXISTS
    assert 'Domain with name "g1" already exists' in str(err.value)
    assert fake.doms["g1"].domid == 7 and "destroy" not in fake.commands()
    assert not os.path.exists(pv.cfg_path("g1"))


def test_stop_soft_then_destroy_after_timeout_and_wait_until_name_is_gone(
    pv: XenPvm, fake: FakeXl, tmp_path: Path
) -> None:
    pv.start(make_spec(), disks(tmp_path))
    fake.guest_obeys = False  # the guest ignores the shutdown request
    fake.dying_lists = 5
    begin = time.monotonic()
    pv.stop("g1", timeout=0.2)
    assert time.monotonic() - begin >= 0.2
    cmds = fake.commands()
    assert cmds.index("shutdown") < cmds.index("destroy")
    # returned only after the name was free: a new create works at once
    assert "g1" not in fake.doms
    assert not os.path.exists(pv.cfg_path("g1"))
    pv.start(make_spec(), disks(tmp_path))
    assert fake.doms["g1"].domid == 2


def test_stop_soft_success_force_and_not_running(pv: XenPvm, fake: FakeXl, tmp_path: Path) -> None:
    pv.start(make_spec(), disks(tmp_path))
    begin = time.monotonic()
    pv.stop("g1", timeout=30)  # the guest shuts down after two looks: no 30 s wait
    assert time.monotonic() - begin < 5
    assert "g1" not in fake.doms and fake.commands().count("destroy") == 1
    pv.start(make_spec(), disks(tmp_path))
    fake.calls.clear()
    pv.stop("g1", timeout=30, force=True)
    assert "shutdown" not in fake.commands() and "destroy" in fake.commands()
    fake.calls.clear()
    pv.stop("g1", timeout=30)  # not running: success, nothing sent
    assert fake.commands() == ["list"]


def test_stop_destroys_a_domain_that_restarted_meanwhile(
    pv: XenPvm, fake: FakeXl, tmp_path: Path
) -> None:
    """A guest that reboots (or crashes with on_crash=restart) during the soft phase."""
    pv.start(make_spec(), disks(tmp_path))
    fake.guest_obeys = False
    real_shutdown = fake._shutdown

    def reboots_instead(args: list[str]) -> tuple[str, str, int]:
        out = real_shutdown(args)
        old = fake.doms.pop("g1")
        fake.doms["g1"] = Dom("g1", 99, old.memory, old.maxmem, old.vcpus)
        return out

    fake._shutdown = reboots_instead  # type: ignore[method-assign]
    begin = time.monotonic()
    pv.stop("g1", timeout=5)
    assert time.monotonic() - begin < 4  # the new domain ended the wait; no 5 s timeout
    assert "g1" not in fake.doms and "destroy" in fake.commands()
    assert not os.path.exists(pv.cfg_path("g1"))


def test_stop_fails_when_the_domain_never_disappears(
    pv: XenPvm, fake: FakeXl, tmp_path: Path
) -> None:
    pv.start(make_spec(), disks(tmp_path))
    fake.dying_lists = 10**9
    pv.gone_timeout = 0.05
    with pytest.raises(HypervisorError) as err:
        pv.stop("g1", timeout=0, force=True)
    assert "still there" in str(err.value)
    assert os.path.exists(pv.cfg_path("g1"))  # kept: the domain still exists


def test_hard_reboot_recreates_from_kept_cfg(pv: XenPvm, fake: FakeXl, tmp_path: Path) -> None:
    pv.start(make_spec(), disks(tmp_path))
    cfg = pv.cfg_path("g1")
    pv.reboot("g1", hard=True)
    assert fake.calls[-1] == ["create", cfg]
    assert fake.doms["g1"].domid == 2
    pv.reboot("g1", hard=False)
    assert fake.calls[-1] == ["reboot", "g1"]


# --- balloon, pinning, pause, suspend ----------------------------------------------------------


def test_balloon_range_and_wait(pv: XenPvm, fake: FakeXl, tmp_path: Path) -> None:
    pv.start(make_spec(), disks(tmp_path))
    for bad in (129, 32):  # above maxmem 128, below min_memory 64
        with pytest.raises(HypervisorError) as err:
            pv.balloon("g1", bad)
        assert err.value.kind == ErrorKind.INVALID
    assert "mem-set" not in fake.commands()
    fake.balloon_steps = 2
    assert pv.balloon("g1", 96) == 96
    assert fake.calls[[c[0] for c in fake.calls].index("mem-set")] == ["mem-set", "g1", "96m"]
    fake.balloon_steps = None  # a guest without balloon driver
    with pytest.raises(HypervisorError) as err:
        pv.balloon("g1", 80)
    assert err.value.kind == ErrorKind.ENVIRONMENT and err.value.fields["actual"] == 96


def test_pin_cpus(pv: XenPvm, fake: FakeXl, tmp_path: Path) -> None:
    pv.start(make_spec(), disks(tmp_path))
    pv.pin_cpus("g1", "1")
    assert fake.doms["g1"].pinned == {"all": "1"}
    pv.pin_cpus("g1", "0:1")
    assert fake.doms["g1"].pinned == {"all": "1", "0": "0", "1": "1"}
    for bad in ("0:1:all", "7", "x"):  # 3 masks for 2 vCPUs, CPU 7 on a 2-CPU node, syntax
        with pytest.raises(HypervisorError) as err:
            pv.pin_cpus("g1", bad)
        assert err.value.fields["param"] == "cpu_mask"


def test_pause_resume_counts_once(pv: XenPvm, fake: FakeXl, tmp_path: Path) -> None:
    pv.start(make_spec(), disks(tmp_path))
    pv.pause("g1")
    pv.pause("g1")
    assert fake.commands().count("pause") == 1
    info = pv.instance_info("g1")
    assert info is not None and info.state == InstanceState.PAUSED
    pv.resume("g1")
    pv.resume("g1")
    assert fake.commands().count("unpause") == 1
    info = pv.instance_info("g1")
    assert info is not None and info.state == InstanceState.RUNNING


def test_suspend_failure_leaves_no_file_and_domain_running(
    pv: XenPvm, fake: FakeXl, tmp_path: Path
) -> None:
    pv.start(make_spec(), disks(tmp_path))
    state = str(tmp_path / "suspend" / "g1.state")
    fake.save_error = "xc: error: Failed to write page data: Internal error\n"
    with pytest.raises(HypervisorError) as err:
        pv.suspend("g1", state)
    assert "Failed to write page data" in str(err.value)
    assert os.listdir(tmp_path / "suspend") == []
    assert fake.doms["g1"].flags == "-b----" and os.path.exists(pv.cfg_path("g1"))
    fake.save_error = ""
    pv.suspend("g1", state)
    assert Path(state).read_bytes().startswith(b"Xen saved domain")
    assert "g1" not in fake.doms and not os.path.exists(pv.cfg_path("g1"))
    pv.start(make_spec(), disks(tmp_path))
    with pytest.raises(HypervisorError) as err:
        pv.suspend("g1", state)  # a saved state exists already
    assert err.value.kind == ErrorKind.EXISTS
    with pytest.raises(HypervisorError) as err:
        pv.resume_suspended(make_spec(), disks(tmp_path), state)
    assert err.value.kind == ErrorKind.WRONG_STATE
    pv.stop("g1", timeout=0, force=True)
    pv.resume_suspended(make_spec(), disks(tmp_path), state)
    assert ["restore", pv.cfg_path("g1"), state] in fake.calls
    assert "g1" in fake.doms and not os.path.exists(state)


# --- console, verify, node info ----------------------------------------------------------------


def test_console_pv_and_hvm(paths: Paths, pv: XenPvm, fake: FakeXl) -> None:
    con = pv.console(make_spec(), node_host="node1")
    assert con.kind == "ssh" and con.command == ["xl", "console", "g1"]
    hvm = XenHvm(paths.hv_run_dir("xen-hvm"), paths=paths, runner=fake)
    con = hvm.console(make_spec(hypervisor="xen-hvm"), node_host="node1")
    assert con.kind == "vnc" and con.port == 11000 and con.display == 5100
    assert con.host == "node1" and con.details["serial"]["command"][-1] == "g1"


def test_verify_and_node_info(pv: XenPvm, fake: FakeXl, tmp_path: Path) -> None:
    pv.sys_class_net = str(tmp_path / "net")
    (tmp_path / "net" / "xenbr0").mkdir(parents=True)
    pv.start(make_spec(), disks(tmp_path))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "xl").write_text("#!/bin/sh\n")
    (bindir / "xl").chmod(0o755)
    os.environ["PATH"], old = str(bindir), os.environ["PATH"]
    try:
        assert pv.verify() == []
        (tmp_path / "net" / "xenbr0").rmdir()
        assert pv.verify() == ["bridge xenbr0 used by a running domain does not exist"]
    finally:
        os.environ["PATH"] = old
    info = pv.node_info()
    assert info.hypervisor == "xen-pvm" and info.memory_total == 2047 and info.cpu_total == 2
    assert info.hv_version.startswith("4.17")


# --- migration -------------------------------------------------------------------------------


class StubListener:
    """Stands in for TunnelListener (the fake xl does not connect to it; see module doc)."""

    instances: list[StubListener] = []

    def __init__(self, paths: Paths, *, host: str, port: int, token: str, **kw: Any) -> None:
        self.host, self.port, self.token = host, port, token
        self.receive_argv = kw["receive_argv"]
        self.closed = False
        StubListener.instances.append(self)

    def start(self) -> None:
        pass

    def wait(self, timeout: float) -> TunnelResult:
        return TunnelResult(rc=0, output="", error="")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def stub_tunnel(monkeypatch: pytest.MonkeyPatch, paths: Paths) -> type[StubListener]:
    from corral.rpc import tls

    tls.create_ca(paths, "c1")
    tls.issue_node_cert(paths, "xen1", ["127.0.0.1"])
    StubListener.instances = []
    monkeypatch.setattr(xen_migration, "TunnelListener", StubListener)
    return StubListener


def test_migration_to_localhost(
    pv: XenPvm, fake: FakeXl, tmp_path: Path, stub_tunnel: type[StubListener]
) -> None:
    spec = make_spec()
    pv.start(spec, disks(tmp_path))
    assert pv.migration_status("g1").status == "none"
    info = pv.migration_info("g1")
    assert info["domid"] == 1 and info["running"] and info["token"]
    pv.accept_migration(spec, disks(tmp_path), info, listen_host="127.0.0.1", port=8002)
    (listener,) = stub_tunnel.instances
    assert listener.token == info["token"] and listener.port == 8002
    assert listener.receive_argv == ["xl", "migrate-receive", "-p"]
    pv.migrate("g1", target_host="127.0.0.1", port=8002, live=True)
    status = pv.migration_status("g1", wait=5)
    assert status.status == "completed", status
    call = next(c for c in fake.calls if c[0] == "migrate")
    assert call[1] == "-s" and "--server-name xen1" in call[2] and "--port 8002" in call[2]
    assert call[3:] == ["-p", "-C", pv.cfg_path("g1"), "g1", "127.0.0.1"]
    env = fake.envs[fake.calls.index(call)]
    assert env == {TOKEN_ENV: info["token"]} and info["token"] not in " ".join(call)
    # the arrived copy is NAME, paused until the target is finalized
    assert fake.doms["g1"].domid == 2 and "p" in fake.doms["g1"].flags
    pv.finalize_migration_target(spec, success=True)
    assert fake.doms["g1"].flags[2] == "-" and listener.closed
    pv.finalize_migration_source("g1", success=True)
    # both sides share NAME.cfg on one node: it stays for the running domain
    assert os.path.exists(pv.cfg_path("g1"))
    info2 = pv.instance_info("g1")
    assert info2 is not None and info2.state == InstanceState.RUNNING


def test_failed_migration_keeps_the_source_and_removes_only_the_incoming_copy(
    pv: XenPvm, fake: FakeXl, tmp_path: Path, stub_tunnel: type[StubListener]
) -> None:
    spec = make_spec()
    pv.start(spec, disks(tmp_path))
    info = pv.migration_info("g1")
    pv.accept_migration(spec, disks(tmp_path), info, listen_host="127.0.0.1", port=8002)
    fake.migrate_error = "migration sender: Target reported failure\nMigration failed\n"
    # a half-arrived copy under xl's temporary name
    fake.doms["g1--incoming"] = Dom("g1--incoming", 9, 128, 128, 2, "--p---")
    pv.migrate("g1", target_host="127.0.0.1", port=8002, live=False)
    status = pv.migration_status("g1", wait=5)
    assert status.status == "failed" and "Migration failed" in status.error
    with pytest.raises(HypervisorError) as err:
        pv.finalize_migration_source("g1", success=True)
    assert err.value.kind == ErrorKind.WRONG_STATE  # never drop a source that did not move
    pv.finalize_migration_target(spec, success=False)
    assert "g1--incoming" not in fake.doms
    assert fake.doms["g1"].domid == 1  # the source is untouched ...
    assert os.path.exists(pv.cfg_path("g1"))  # ... and so is its config
    pv.finalize_migration_source("g1", success=False)
    assert fake.doms["g1"].flags[2] == "-"  # paused for the non-live move, running again


def test_migrate_needs_a_prepared_token(pv: XenPvm, fake: FakeXl, tmp_path: Path) -> None:
    pv.start(make_spec(), disks(tmp_path))
    with pytest.raises(HypervisorError) as err:
        pv.migrate("g1", target_host="127.0.0.1", port=8002, live=True)
    assert err.value.kind == ErrorKind.WRONG_STATE
    with pytest.raises(HypervisorError) as err:
        pv.accept_migration(
            make_spec(), [], {"version": 1, "hypervisor": "kvm"}, listen_host="h", port=1
        )
    assert err.value.kind == ErrorKind.INVALID


# --- node glue: file driver, powercycle ----------------------------------------------------------


def test_file_driver_travels_from_disk_to_attached_disk(paths: Paths, tmp_path: Path) -> None:
    from corral.master.ops.common import disk_refs
    from corral.node.backend import NodeBackend
    from corral.node.backend.instances import file_driver_of
    from corral.objects.instance import Disk, Instance
    from corral.rpc.calls import BlockdevRequest, DiskRef

    inst = Instance(
        name="g1",
        primary_node="n1",
        os="busybox",
        hypervisor="xen-pvm",
        disk_template="file",
        disks=[
            Disk(size=4, logical_id=os.path.join(paths.file_storage_dir, "g1", "disk0")),
            Disk(
                size=4,
                logical_id=os.path.join(paths.file_storage_dir, "g1", "disk1"),
                file_driver="blktap2",
            ),
        ],
    )
    refs = disk_refs(inst)
    assert [r.file_driver for r in refs] == [None, "blktap2"]
    backend = NodeBackend(paths, "n1")
    for ref in refs:
        backend.blockdev_create(BlockdevRequest(volume=ref.volume))
    attached = backend.instances.attach_disks(refs)
    assert [a.file_driver for a in attached] == ["loop", "blktap2"]
    # a block device is given as is (Xen's phy:), whatever the disk says
    block = next(
        (f"/dev/{n}" for n in sorted(os.listdir("/dev")) if n.startswith(("loop", "vd", "sd"))),
        None,
    )
    if block is not None and os.path.exists(block) and not os.path.isfile(block):
        import stat

        if stat.S_ISBLK(os.stat(block).st_mode):
            assert file_driver_of(DiskRef(index=0, volume=refs[0].volume), block) is None


def test_instance_create_refuses_unknown_file_driver() -> None:
    from corral.master.ops.instance import InstanceCreate
    from corral.objects.opcodes import OpInstanceCreate

    op = OpInstanceCreate(
        instance_name="g1",
        os_type="busybox",
        disk_template="file",
        disks=[{"size": 64}],  # type: ignore[list-item]
        file_driver="tap3",
    )
    with pytest.raises(ParamError) as err:
        InstanceCreate(op).check_arguments()
    assert "file_driver" in err.value.problems


def test_node_powercycle_writes_the_root_relative_trigger(paths: Paths) -> None:
    """The only powercycle a test may run: under a tmp root the trigger is a plain file."""
    from corral.node.backend import NodeBackend
    from corral.rpc.calls_nodes import NodePowercycleRequest

    assert paths.sysrq_trigger == os.path.join(paths.root, "proc/sysrq-trigger")
    assert paths.root != "/"
    os.makedirs(os.path.dirname(paths.sysrq_trigger))
    backend = NodeBackend(paths, "n1")
    begin = time.monotonic()
    answer = backend.node_powercycle(NodePowercycleRequest(hypervisor="xen-pvm", delay=0.2))
    assert "will powercycle" in answer.message
    assert not os.path.exists(paths.sysrq_trigger)  # it answers first ...
    while not os.path.exists(paths.sysrq_trigger) and time.monotonic() - begin < 10:
        time.sleep(0.02)
    assert time.monotonic() - begin >= 0.2  # ... and acts after the delay
    time.sleep(0.05)
    assert Path(paths.sysrq_trigger).read_text() == "b"


def test_powercycle_without_trigger_directory_fails_cleanly(pv: XenPvm, tmp_path: Path) -> None:
    with pytest.raises(HypervisorError) as err:
        pv.powercycle_node(str(tmp_path / "no" / "sysrq-trigger"))
    assert err.value.kind == ErrorKind.ENVIRONMENT


def test_refused_shutdown_is_asked_again_until_the_guest_listens(
    pv: XenPvm, fake: FakeXl, tmp_path: Path
) -> None:
    """A guest still booting: xl refuses until its PV control driver is up."""
    pv.start(make_spec(), disks(tmp_path))
    fake.shutdown_refusals = 2
    pv.stop("g1", timeout=10)
    assert fake.commands().count("shutdown") == 3
    assert fake.commands().count("destroy") == 1  # of the shut-down domain, not earlier
    assert "g1" not in fake.doms
    # a guest that never listens is destroyed once the timeout has passed
    pv.start(make_spec(), disks(tmp_path))
    fake.shutdown_refusals = 10**6
    begin = time.monotonic()
    pv.stop("g1", timeout=1.5)
    assert time.monotonic() - begin >= 1.5 and "g1" not in fake.doms

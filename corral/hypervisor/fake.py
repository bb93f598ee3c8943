"""The ``fake`` hypervisor: instances without processes, for control-plane tests and benchmarks.

It is a product feature (Ganeti's ``hv_fake``): a cluster with ``fake`` enabled can create,
start, stop, reboot, balloon and list thousands of instances on one machine. Each running
instance is one small JSON file ``<run_dir>/<name>.json``, so the state survives a restart of
the node daemon the way real guests do, and listing is a single directory read.

It keeps the same contracts as real drivers: starting a running instance is refused (kind
WRONG_STATE), balloon targets outside ``[min_memory, memory]`` are refused (kind INVALID),
stopping a stopped instance succeeds. The ``boot_delay`` hvparam makes a start take that
long, to exercise timeouts and concurrency. Pause, suspend and migration are in
:mod:`corral.hypervisor.fake_power`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.common.paths import Paths
from corral.hypervisor.base import (
    AttachedDisk,
    Capabilities,
    ConsoleInfo,
    HvNodeInfo,
    Hypervisor,
    InstanceInfo,
    InstanceSpec,
    InstanceState,
)
from corral.hypervisor.fake_devices import FakeDevices, nic_record
from corral.hypervisor.fake_power import FakePower
from corral.objects.params.hv import FAKE_HVPARAMS
from corral.objects.params.spec import Schema

_SUFFIX = ".json"
#: Environment variable setting the version the fake hypervisor reports (default ``fake``):
#: lets tests run a node whose hypervisor version differs from the others'.
VERSION_ENV = "CORRAL_FAKE_HV_VERSION"


class FakeHypervisor(FakePower, FakeDevices, Hypervisor):
    """Instances as JSON files; see the module docstring.

    Args:
        run_dir: where the instance files live (``paths.hv_run_dir("fake")``).
        meminfo: the host memory facts reported by :meth:`node_info`.
    """

    NAME: ClassVar[str] = "fake"
    PARAMS: ClassVar[Schema] = FAKE_HVPARAMS
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        balloon=True,
        pause=True,
        runs_processes=False,
        hotplug_disk=True,
        hotplug_nic=True,
        live_migration=True,
    )

    def __init__(self, run_dir: str, *, meminfo: str = "/proc/meminfo") -> None:
        super().__init__(run_dir)
        self.meminfo = meminfo

    @classmethod
    def from_paths(cls, paths: Paths) -> FakeHypervisor:
        """The driver of a node laid out by ``paths`` (used by the registry)."""
        return cls(paths.hv_run_dir(cls.NAME))

    # --- storage of the instance files -----------------------------------------------------

    def _path(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise HypervisorError(f"invalid instance name {name!r}", kind=ErrorKind.INVALID)
        return os.path.join(self.run_dir, name + _SUFFIX)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self._path(name), encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HypervisorError(f"fake instance file of {name} is unreadable: {exc}") from exc
        return data if isinstance(data, dict) else None

    def _write(self, name: str, data: Mapping[str, Any]) -> None:
        # NOTE: no fsync (unlike common.fileio.write_atomic): fake instances are for tests and
        # benchmarks with thousands of them; an atomic rename is enough.
        path = self._path(name)
        tmp = os.path.join(self.run_dir, f".{name}.tmp{os.getpid()}")
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise HypervisorError(f"cannot write fake instance file {path}: {exc}") from exc

    def _require(self, name: str) -> dict[str, Any]:
        data = self._read(name)
        if data is None:
            raise HypervisorError(f"instance {name} is not running", kind=ErrorKind.WRONG_STATE)
        return data

    # --- the driver interface ---------------------------------------------------------------

    def validate_params(self, hvparams: Mapping[str, Any]) -> None:
        """Check fake hvparams (syntax only: nothing on the node matters).

        Raises:
            ParamError: unknown keys or bad values, by key.
        """
        FAKE_HVPARAMS.check_syntax(dict(hvparams))

    def start(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], *, paused: bool = False
    ) -> None:
        """Record the instance as running (or paused) after ``boot_delay`` seconds.

        Raises:
            HypervisorError: kind WRONG_STATE if it already runs; kind INVALID for bad hvparams.
        """
        try:
            hv = FAKE_HVPARAMS.fill(FAKE_HVPARAMS.check_syntax(dict(spec.hvparams)))
        except ParamError as exc:
            raise HypervisorError(str(exc), kind=ErrorKind.INVALID, problems=exc.problems) from exc
        if self._read(spec.name) is not None:
            raise HypervisorError(
                f"instance {spec.name} is already running", kind=ErrorKind.WRONG_STATE
            )
        if hv["boot_delay"]:
            time.sleep(float(hv["boot_delay"]))
        self._write(
            spec.name,
            {
                "name": spec.name,
                "uuid": spec.uuid,
                "state": InstanceState.PAUSED.value if paused else InstanceState.RUNNING.value,
                "memory": spec.memory,
                "min_memory": spec.min_memory,
                "max_memory": spec.memory,
                "vcpus": spec.vcpus,
                "start_time": time.time(),
                "reboots": 0,
                "disks": [d.path for d in disks],
                # devices as the hotplug methods see them (see fake_devices.py)
                "disk_devices": [{"index": d.index, "uuid": d.uuid, "path": d.path} for d in disks],
                "nic_devices": [nic_record(n) for n in spec.nics],
                "cpu_mask": str(hv.get("cpu_mask", "all")),
            },
        )

    def stop(self, name: str, *, timeout: float, force: bool = False) -> None:
        """Forget the instance (stopping a stopped instance succeeds).

        Raises:
            HypervisorError: its file cannot be removed.
        """
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise HypervisorError(f"cannot stop fake instance {name}: {exc}") from exc

    def reboot(self, name: str, *, hard: bool) -> None:
        """Count a reboot (a paused instance comes back running).

        Raises:
            HypervisorError: kind WRONG_STATE when it does not run.
        """
        data = self._require(name)
        data["reboots"] = int(data.get("reboots", 0)) + 1
        data["state"] = InstanceState.RUNNING.value
        data["memory"] = data.get("max_memory", data.get("memory"))
        self._write(name, data)

    def list_instances(self) -> list[str]:
        """Names of the running fake instances (one directory listing).

        Raises:
            HypervisorError: the run directory cannot be read.
        """
        try:
            names = os.listdir(self.run_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HypervisorError(f"cannot list {self.run_dir}: {exc}") from exc
        return sorted(
            n[: -len(_SUFFIX)] for n in names if n.endswith(_SUFFIX) and not n.startswith(".")
        )

    def _info(self, data: Mapping[str, Any]) -> InstanceInfo:
        return InstanceInfo(
            name=str(data["name"]),
            state=InstanceState(data.get("state", "running")),
            memory=int(data["memory"]),
            vcpus=int(data["vcpus"]),
            cpu_time=max(0.0, time.time() - float(data.get("start_time", time.time()))) / 100,
            uuid=str(data.get("uuid", "")),
            details={
                "reboots": data.get("reboots", 0),
                "fake": True,
                "max_memory": int(data["max_memory"]),
                "min_memory": int(data["min_memory"]),
                # like the KVM driver: the side of a migration in progress (or left behind)
                **(
                    {"migration": str(data["migration"].get("role", ""))}
                    if isinstance(data.get("migration"), dict)
                    else {}
                ),
            },
        )

    def instance_info(self, name: str) -> InstanceInfo | None:
        """The recorded state of one instance, or None.

        Raises:
            HypervisorError: its file is unreadable.
        """
        data = self._read(name)
        return None if data is None else self._info(data)

    def all_instances_info(self) -> list[InstanceInfo]:
        """The recorded state of every instance (files vanishing meanwhile are skipped)."""
        infos = []
        for name in self.list_instances():
            data = self._read(name)
            if data is not None:
                infos.append(self._info(data))
        return infos

    def balloon(self, name: str, memory: int) -> int:
        """Record the new memory size.

        Raises:
            HypervisorError: kind WRONG_STATE when not running; kind INVALID outside
                ``[min_memory, memory]``.
        """
        data = self._require(name)
        low, high = int(data["min_memory"]), int(data["max_memory"])
        if not low <= memory <= high:
            raise HypervisorError(
                f"cannot balloon {name} to {memory} MiB: it must stay between min_memory "
                f"{low} MiB and memory {high} MiB",
                kind=ErrorKind.INVALID,
                memory=memory,
            )
        data["memory"] = memory
        self._write(name, data)
        return memory

    def console(self, spec: InstanceSpec, *, node_host: str) -> ConsoleInfo:
        """A message: fake instances have no console."""
        return ConsoleInfo(
            instance=spec.name,
            kind="msg",
            message=f"{spec.name} runs on the fake hypervisor, which has no console",
        )

    def node_info(self) -> HvNodeInfo:
        """Host memory and CPUs, minus the memory the fake instances pretend to use.

        Raises:
            HypervisorError: the memory facts cannot be read.
        """
        try:
            with open(self.meminfo, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise HypervisorError(f"cannot read {self.meminfo}: {exc}") from exc
        total_kib = 0
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                total_kib = int(line.split()[1])
        used = sum(i.memory for i in self.all_instances_info())
        total = total_kib // 1024
        return HvNodeInfo(
            hypervisor=self.NAME,
            memory_total=total,
            memory_free=max(0, total - used),
            memory_hv=used,
            cpu_total=os.cpu_count() or 1,
            hv_version=os.environ.get(VERSION_ENV) or "fake",
        )

    def verify(self) -> list[str]:
        """Nothing can be missing for the fake hypervisor except a writable run directory."""
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as exc:
            return [f"cannot create {self.run_dir}: {exc}"]
        if not os.access(self.run_dir, os.W_OK):
            return [f"{self.run_dir} is not writable"]
        return []

    def cleanup(self, name: str) -> None:
        """Nothing to clean: a stopped fake instance leaves no files."""

"""``corral daemons start|stop|status``: the local ``corral-noded`` and ``corral-master``.

Daemons run detached (``common/daemonize.py``): new session, output appended to
``<log_dir>/<daemon>.log``, pid file written once they serve. They are started with this very
Python interpreter and package (``python -m corral.node.daemon``), so a source checkout works
without installing. The node daemon starts first (the master talks to it), and stops last.
"""

from __future__ import annotations

import os
import sys

import typer

import corral
from corral.cli.common import Cli, ExitCode, run_command
from corral.common import daemonize
from corral.common.errors import CorralError, ErrorKind
from corral.common.paths import Paths

NODED = "corral-noded"
MASTER = "corral-master"
#: Module run for each daemon.
MODULES = {NODED: "corral.node.daemon", MASTER: "corral.master.daemon"}

app = typer.Typer(help="Start, stop and check the local Corral daemons.", no_args_is_help=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(corral.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _noded_port(paths: Paths) -> int | None:
    from corral.master.bootstrap import load_cluster_conf

    try:
        return load_cluster_conf(paths).noded_port
    except CorralError:
        return None


def daemon_argv(paths: Paths, name: str) -> list[str]:
    """The command line that runs daemon ``name`` in the foreground (detached by the caller)."""
    log_file = os.path.join(paths.log_dir, f"{name}.log")
    argv = [
        sys.executable,
        "-m",
        MODULES[name],
        "--root",
        paths.root,
        "--foreground",
        "--log-file",
        log_file,
    ]
    if name == NODED:
        port = _noded_port(paths)
        if port is not None:
            argv += ["--port", str(port)]
    return argv


def start_daemons(paths: Paths, *, say: bool = True, cli: Cli | None = None) -> dict[str, int]:
    """Start the node daemon, then the master (those not already running).

    Returns:
        The pid of each daemon.

    Raises:
        CorralError: no cluster is initialised here, or a daemon failed to start (its log
            tail is in the message's fields).
    """
    if not os.path.exists(paths.cluster_conf):
        raise CorralError(
            f"no cluster is initialised under {paths.root} (run 'corral cluster init' first)",
            kind=ErrorKind.WRONG_STATE,
        )
    os.makedirs(paths.log_dir, exist_ok=True)
    pids: dict[str, int] = {}
    for name in (NODED, MASTER):
        running = daemonize.daemon_status(paths.pid_file(name), name=name)
        if running is not None:
            pids[name] = running
            if say and cli:
                cli.print(f"{name} already running (pid {running})")
            continue
        log_file = os.path.join(paths.log_dir, f"{name}.log")
        try:
            pid = daemonize.start_daemon(
                daemon_argv(paths, name), paths.pid_file(name), log_file, env=_env(), name=name
            )
        except CorralError as exc:
            tail = str(exc.fields.get("log_tail", "")).strip()
            raise CorralError(
                f"{name} did not start: {exc}"
                + (f"\n{tail}" if tail and tail not in str(exc) else "")
                + f"\n(see {log_file})",
                kind=exc.kind,
            ) from exc
        pids[name] = pid
        if say and cli:
            cli.print(f"{name} started (pid {pid})")
    return pids


def stop_daemons(paths: Paths, *, cli: Cli | None = None, timeout: float = 30.0) -> None:
    """Stop the master, then the node daemon. Running guests keep running."""
    for name in (MASTER, NODED):
        stopped = daemonize.stop_daemon(paths.pid_file(name), timeout, name=name)
        if cli:
            cli.print(f"{name} stopped" if stopped else f"{name} was not running")


def daemon_states(paths: Paths) -> dict[str, int | None]:
    """Pid of each daemon, or None if it does not run."""
    return {n: daemonize.daemon_status(paths.pid_file(n), name=n) for n in (NODED, MASTER)}


@app.command("start")
def start_cmd(ctx: typer.Context) -> None:
    """Start corral-noded and corral-master."""
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: _none(start_daemons(cli.paths, cli=cli))))


@app.command("stop")
def stop_cmd(ctx: typer.Context) -> None:
    """Stop corral-master and corral-noded (guests keep running)."""
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: stop_daemons(cli.paths, cli=cli)))


@app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """Show whether the daemons run (exit code 1 if one does not)."""
    cli: Cli = ctx.obj

    def action() -> None:
        states = daemon_states(cli.paths)
        if cli.json:
            from corral.cli.output import print_json

            print_json(states)
        else:
            for name, pid in states.items():
                cli.print(f"{name}: " + (f"running (pid {pid})" if pid else "stopped"))
        if any(pid is None for pid in states.values()):
            raise ExitCode(1)

    raise typer.Exit(run_command(cli, action))


def _none(_value: object) -> None:
    return None

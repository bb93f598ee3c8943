"""``corral cluster init|move-store|info|destroy|version|getmaster``.

``init`` and ``destroy`` work on this host's files directly (``master/bootstrap.py``) and
start/stop the daemons; everything else goes through the API.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from corral.cli import cluster_actions
from corral.cli.common import Cli, run_command
from corral.cli.daemons import MASTER, start_daemons, stop_daemons
from corral.cli.parsing import UsageError, parse_beparams, parse_hv_option, parse_kv
from corral.common import daemonize
from corral.common.errors import CorralError, ErrorKind, OpError
from corral.common.paths import DEFAULT_NODED_PORT, DEFAULT_RAPI_PORT, Paths

app = typer.Typer(help="Cluster-wide commands.", no_args_is_help=True)


def default_node_address(node_name: str) -> str:
    """The address ``node_name`` resolves to (127.0.0.1 if it does not resolve)."""
    try:
        return socket.gethostbyname(node_name)
    except OSError:
        return "127.0.0.1"


def cluster_init(
    cli: Cli,
    name: str,
    *,
    enabled_hypervisors: str = "kvm",
    file_storage_dir: str | None = None,
    node_name: str | None = None,
    node_address: str | None = None,
    rapi_port: int = DEFAULT_RAPI_PORT,
    rapi_bind: str | None = None,
    noded_port: int = DEFAULT_NODED_PORT,
    hvparams: Sequence[str] = (),
    beparams: Sequence[str] = (),
    nicparams: Sequence[str] = (),
    enabled_disk_templates: str | None = None,
    mac_prefix: str | None = None,
    start: bool = True,
    store: str | None = None,
) -> None:
    """Initialise a cluster on this host and start its daemons.

    ``store`` is ``etcd://host:port[,host:port...]`` to keep the state in etcd (default: a
    SQLite file on this host).

    Raises:
        UsageError: an option value cannot be parsed.
        CorralError: the master's bootstrap refused (naming the field), or a daemon failed.
    """
    from corral.master.bootstrap import admin_password_file, init_cluster, load_cluster_conf

    hvs = [h.strip() for h in enabled_hypervisors.split(",") if h.strip()]
    if not hvs:
        raise UsageError("--enabled-hypervisors: give at least one hypervisor (e.g. kvm,fake)")
    hv_params: dict[str, dict[str, Any]] = {}
    for value in hvparams:
        hv, params = parse_hv_option(value)
        if hv is None:
            raise UsageError(f"-H: name the hypervisor, e.g. -H kvm:{value}")
        hv_params.setdefault(hv, {}).update(params)
    nic: dict[str, Any] = {}
    for value in nicparams:
        nic.update(parse_kv(value, "-N"))
    node = node_name or socket.gethostname()
    kwargs: dict[str, Any] = {
        "cluster_name": name,
        "node_name": node,
        "node_address": node_address or default_node_address(node),
        "enabled_hypervisors": hvs,
        "file_storage_dir": file_storage_dir,
        "rapi_port": rapi_port,
        "rapi_bind": rapi_bind,
        "noded_port": noded_port,
        "hvparams": hv_params,
        "beparams": parse_beparams(beparams),
        "nicparams": nic,
    }
    if enabled_disk_templates:
        kwargs["enabled_disk_templates"] = [t.strip() for t in enabled_disk_templates.split(",")]
    if mac_prefix:
        kwargs["mac_prefix"] = mac_prefix
    if store:
        kwargs["store"] = store
    cluster = init_cluster(cli.paths, **kwargs)
    cli.print(
        f"Cluster {cluster.name} initialised; master node {cluster.master_node} "
        f"({kwargs['node_address']})"
    )
    cli.print(f"RAPI user 'admin': password in {admin_password_file(cli.paths)}")
    if store:
        cli.print(f"Cluster state in {load_cluster_conf(cli.paths).store}")
    if start:
        start_daemons(cli.paths, cli=cli)


def stored_instance_names(paths: Paths) -> list[str]:
    """Names of the instances in the cluster's store, read directly (master not running).

    Raises:
        StoreError: the store cannot be opened or read.
    """
    from corral.master.bootstrap import cluster_store_url, open_store
    from corral.master.config import ClusterConfig

    url = cluster_store_url(paths)
    if url is None:
        return []
    store = open_store(url)
    try:
        return sorted(inst.name for inst in ClusterConfig(store).instances())
    finally:
        store.close()


def remaining_instances(cli: Cli) -> list[str]:
    """The instances the cluster still has: asked from the running master, else from the store.

    Raises:
        CorralError: the master answered with an error, or the store cannot be read.
    """
    if daemonize.daemon_status(cli.paths.pid_file(MASTER), name=MASTER) is not None:
        try:
            return sorted(cli.client().instance_names())
        except CorralError as exc:
            if exc.kind is not ErrorKind.ENVIRONMENT:
                raise
            # NOTE: a master that runs but does not answer: its store says the same.
    return stored_instance_names(cli.paths)


def cluster_destroy(cli: Cli, *, yes_do_it: bool, force: bool = False) -> None:
    """Stop the daemons and remove the cluster's state from this host.

    Instances are checked for before anything is stopped: with instances left (and no
    ``force``) nothing changes and the daemons keep running.

    Raises:
        UsageError: ``--yes-do-it`` was not given.
        OpError: instances remain and ``force`` is not set (kind WRONG_STATE).
        CorralError: the instances cannot be listed, or a file cannot be removed.
    """
    from corral.master.bootstrap import destroy_cluster

    if not yes_do_it:
        raise UsageError(
            "destroying a cluster is irreversible; if you really want to destroy this "
            "cluster, supply the --yes-do-it option"
        )
    if not force:
        names = remaining_instances(cli)
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            how = (
                "use 'corral cluster destroy --yes-do-it --force'" if cli.ganeti else "pass --force"
            )
            raise OpError(
                f"there are still {len(names)} instance(s) in the cluster ({shown}); remove "
                f"them first, or {how} to destroy the cluster anyway (their disks and "
                "running guests are left behind); nothing was changed",
                kind=ErrorKind.WRONG_STATE,
            )
    stop_daemons(cli.paths, cli=cli)
    try:
        destroy_cluster(cli.paths, force=force)
    except CorralError as exc:
        raise CorralError(
            f"{exc} (the daemons were stopped: 'corral daemons start' starts them again)",
            kind=exc.kind,
        ) from exc
    cli.print("Cluster destroyed")


def cluster_move_store(cli: Cli, target: str) -> None:
    """Move this single-host cluster's state from SQLite onto etcd (``master/storemove.py``).

    Refuses (changing nothing, the master keeps running) while jobs are unfinished, or when
    etcd is unreachable or already holds Corral keys. Otherwise stops the master daemon (the
    only writer of the store), moves the state and starts the master again — on etcd after
    a successful move, on the unchanged SQLite store after a failed one.

    Raises:
        OpError: unfinished jobs (kind WRONG_STATE).
        StoreError: etcd unreachable or not empty, or the copy failed (everything copied was
            deleted again).
        CorralError: no cluster here, it is already on etcd, or the master did not restart.
    """
    from corral.master.bootstrap import check_etcd_target, load_cluster_conf, open_store
    from corral.master.storemove import move_store, unfinished_jobs
    from corral.store.url import is_etcd, normalize_url

    conf = load_cluster_conf(cli.paths)
    if is_etcd(conf.store):
        raise CorralError(
            f"the cluster's store is already etcd ({conf.store}); nothing to move",
            kind=ErrorKind.WRONG_STATE,
        )
    if not is_etcd(target):
        raise UsageError(f"the target must be etcd://host:port[,host:port...], not {target!r}")
    url = normalize_url(target)
    master_pid = daemonize.daemon_status(cli.paths.pid_file(MASTER), name=MASTER)
    if master_pid is not None:
        # NOTE: checked before stopping the master so that a refusal changes nothing;
        # move_store checks again once the master (the only writer) is stopped.
        source = open_store(conf.store)
        try:
            jobs = unfinished_jobs(source)
        finally:
            source.close()
        if jobs:
            raise OpError(
                f"{len(jobs)} job(s) are not finished ("
                + ", ".join(str(j) for j, _ in jobs[:10])
                + "); wait for them or cancel them, then move the store; nothing was changed",
                kind=ErrorKind.WRONG_STATE,
            )
        check_etcd_target(url, action="cluster move-store")
        daemonize.stop_daemon(cli.paths.pid_file(MASTER), 30.0, name=MASTER)
        cli.print(f"{MASTER} stopped for the move")
    try:
        result = move_store(cli.paths, url, progress=cli.print)
    except BaseException:  # also Ctrl-C: the master must come back
        if master_pid is not None:
            _restart_master(cli)
        raise
    if master_pid is not None:
        start_daemons(cli.paths, cli=cli)
    cli.print(
        f"Cluster state moved to {result.target}: {result.keys} keys in "
        f"{result.transactions} transaction(s), {result.seconds:.1f}s; "
        f"the SQLite store is kept as {result.backup}"
    )


def _restart_master(cli: Cli) -> None:
    """Start the master again after a failed move (a failure to do so is only printed)."""
    try:
        start_daemons(cli.paths, cli=cli)
    except CorralError as exc:
        cli.error(f"error: the master did not start again: {exc}")


@app.command("init")
def init_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The cluster's name.")],
    enabled_hypervisors: Annotated[
        str,
        typer.Option("--enabled-hypervisors", help="Comma-separated; the first is the default."),
    ] = "kvm",
    file_storage_dir: Annotated[
        str | None, typer.Option("--file-storage-dir", help="Where file disks go.")
    ] = None,
    node_name: Annotated[str | None, typer.Option("--node-name", help="This node's name.")] = None,
    node_address: Annotated[
        str | None,
        typer.Option("--node-address", help="This node's IP (node daemon listens there)."),
    ] = None,
    rapi_port: Annotated[int, typer.Option("--rapi-port")] = DEFAULT_RAPI_PORT,
    rapi_bind: Annotated[str | None, typer.Option("--rapi-bind", help="RAPI address.")] = None,
    noded_port: Annotated[int, typer.Option("--noded-port")] = DEFAULT_NODED_PORT,
    hvparams: Annotated[
        list[str] | None,
        typer.Option("-H", "--hypervisor-parameters", help="hv:key=value,... (repeatable)."),
    ] = None,
    beparams: Annotated[
        list[str] | None,
        typer.Option("-B", "--backend-parameters", help="key=value,... e.g. memory=256M,vcpus=1"),
    ] = None,
    nicparams: Annotated[
        list[str] | None, typer.Option("-N", "--nic-parameters", help="key=value,...")
    ] = None,
    enabled_disk_templates: Annotated[str | None, typer.Option("--enabled-disk-templates")] = None,
    mac_prefix: Annotated[str | None, typer.Option("--mac-prefix")] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Where the cluster state lives: etcd://host:port[,host:port...] "
            "(default: a SQLite file on this host).",
        ),
    ] = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="Do not start the daemons.")] = False,
) -> None:
    """Initialise a cluster with this host as master, and start the daemons."""
    cli: Cli = ctx.obj
    raise typer.Exit(
        run_command(
            cli,
            lambda: cluster_init(
                cli,
                name,
                enabled_hypervisors=enabled_hypervisors,
                file_storage_dir=file_storage_dir,
                node_name=node_name,
                node_address=node_address,
                rapi_port=rapi_port,
                rapi_bind=rapi_bind,
                noded_port=noded_port,
                hvparams=hvparams or [],
                beparams=beparams or [],
                nicparams=nicparams or [],
                enabled_disk_templates=enabled_disk_templates,
                mac_prefix=mac_prefix,
                start=not no_start,
                store=store,
            ),
        )
    )


@app.command("move-store")
def move_store_cmd(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(help="The etcd to move onto: etcd://host:port[,host:port...].")
    ],
) -> None:
    """Move the cluster's state from SQLite onto an empty etcd (the master restarts)."""
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: cluster_move_store(cli, target)))


@app.command("info")
def info_cmd(ctx: typer.Context) -> None:
    """Show cluster information."""
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: cluster_actions.cluster_info(cli)))


@app.command("getmaster")
def getmaster_cmd(ctx: typer.Context) -> None:
    """Print the master node's name."""
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: cluster_actions.cluster_getmaster(cli)))


@app.command("master-failover")
def master_failover_cmd(ctx: typer.Context) -> None:
    """Make this node (a master candidate) the master."""
    from corral.cli.leader import cluster_master_failover

    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: cluster_master_failover(cli)))


@app.command("version")
def version_cmd(ctx: typer.Context) -> None:
    """Print Corral's versions."""
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: cluster_actions.cluster_version(cli)))


@app.command("destroy")
def destroy_cmd(
    ctx: typer.Context,
    yes_do_it: Annotated[
        bool, typer.Option("--yes-do-it", help="Confirm the destruction.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Even if instances remain.")] = False,
) -> None:
    """Stop the daemons and remove the cluster's state from this host."""
    cli: Cli = ctx.obj
    raise typer.Exit(
        run_command(cli, lambda: cluster_destroy(cli, yes_do_it=yes_do_it, force=force))
    )

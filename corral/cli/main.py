"""``corral``: the command-line interface (typer + rich).

::

    corral [--root DIR] [--output table|json] [--api-url URL --user NAME] NOUN VERB ...

Nouns: ``cluster``, ``daemons``, ``group``, ``instance``, ``job``, ``node``, ``os``. Every
command but ``cluster init|destroy`` and ``daemons`` talks to the master's API: by default
over its local UNIX socket (root only, no password), or with ``--api-url`` to a RAPI URL with
HTTP Basic credentials (``--user``; the password from ``$CORRAL_PASSWORD``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from corral.cli import cluster, daemons, instance, job, node, verify
from corral.cli import group as group_cmds
from corral.cli import os as os_cmds
from corral.cli.common import Cli, paths_from

app = typer.Typer(
    name="corral",
    help="Corral: a cluster virtualization manager (Ganeti-compatible).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def global_options(
    ctx: typer.Context,
    root: Annotated[
        str | None,
        typer.Option(
            "--root", envvar="CORRAL_ROOT", help="Root directory of Corral's files (default /)."
        ),
    ] = None,
    output: Annotated[str, typer.Option("--output", help="table or json.")] = "table",
    api_url: Annotated[
        str | None,
        typer.Option(
            "--api-url", envvar="CORRAL_API_URL", help="RAPI URL, e.g. https://master:5080."
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", envvar="CORRAL_USER", help="RAPI user (password from $CORRAL_PASSWORD)."
        ),
    ] = None,
    ca_cert: Annotated[
        str | None, typer.Option("--ca-cert", help="CA to verify the RAPI with.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Do not verify the RAPI's TLS.")
    ] = False,
) -> None:
    """Global options."""
    if output not in ("table", "json"):
        raise typer.BadParameter("expected table or json", param_hint="--output")
    if ctx.obj is None:
        ctx.obj = Cli(
            paths=paths_from(root),
            output=output,
            api_url=api_url,
            user=user,
            ca_cert=ca_cert,
            insecure=insecure,
        )
    else:  # tests pass a prepared Cli; the options still apply
        ctx.obj.output = output


verify.register(cluster.app)
app.add_typer(cluster.app, name="cluster")
app.add_typer(daemons.app, name="daemons")
app.add_typer(instance.app, name="instance")
app.add_typer(job.app, name="job")
# NOTE: imported for its side effect: it adds migrate/failover/move to the instance app and
# evacuate/migrate/failover to the node app.
from corral.cli import mobility  # noqa: E402, F401

app.add_typer(node.app, name="node")
app.add_typer(group_cmds.app, name="group")
app.add_typer(os_cmds.app, name="os")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``corral``; returns the exit code."""
    try:
        app(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="corral",
            standalone_mode=True,
        )
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every CLI command shares: the invocation context, the client, and error handling.

Exit codes (Ganeti's): 0 success, 1 failure (bad input, a refused or failed job, the master
unreachable), 2 usage errors from the option parser, 13 a required confirmation was not
given, 14 an unknown output field.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

from rich.console import Console

from corral.cli.parsing import UsageError
from corral.client import CorralClient
from corral.common.errors import CorralError
from corral.common.paths import Paths

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIRMATION = 13
EXIT_UNKNOWN_FIELD = 14

#: Environment variable holding the RAPI password for ``--api-url``.
PASSWORD_ENV = "CORRAL_PASSWORD"


def data_console(*, stderr: bool = False) -> Console:
    """A rich console that prints data verbatim.

    Names, MACs, tags and messages come from users and guests: neither rich markup
    (``[bold]``), emoji codes (``:cd:`` in a MAC) nor highlighting may change them.
    """
    return Console(stderr=stderr, highlight=False, markup=False, emoji=False, soft_wrap=True)


class ExitCode(Exception):
    """Leave the command with this exit code (the message, if any, is already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclasses.dataclass
class Cli:
    """One CLI invocation: where the cluster is, how to reach the API, how to print.

    Attributes:
        paths: the file layout (``--root`` or ``$CORRAL_ROOT``).
        output: ``table`` or ``json``.
        api_url: a RAPI URL instead of the local socket.
        user: RAPI user for ``api_url`` (password from ``$CORRAL_PASSWORD``).
        ca_cert: CA file to verify the RAPI server with; ``insecure`` disables verification.
        ganeti: print as Ganeti's ``gnt-*`` commands do.
    """

    paths: Paths
    output: str = "table"
    api_url: str | None = None
    user: str | None = None
    ca_cert: str | None = None
    insecure: bool = False
    ganeti: bool = False
    out: Console = dataclasses.field(default_factory=data_console)
    err: Console = dataclasses.field(default_factory=lambda: data_console(stderr=True))
    client_factory: Callable[[Cli], CorralClient] | None = None
    _client: CorralClient | None = None

    @property
    def json(self) -> bool:
        """Whether ``--output json`` was asked for."""
        return self.output == "json"

    def client(self) -> CorralClient:
        """The API client (created on first use).

        Raises:
            UsageError: a RAPI user is given without a password in ``$CORRAL_PASSWORD``.
        """
        if self._client is None:
            if self.client_factory is not None:
                self._client = self.client_factory(self)
            elif self.api_url:
                password = os.environ.get(PASSWORD_ENV)
                if self.user and not password:
                    from corral.master.bootstrap import admin_password_file

                    option = "$CORRAL_USER" if self.ganeti else "--user"
                    raise UsageError(
                        f"no password given for the RAPI user {self.user!r} ({option}): "
                        f"put it in ${PASSWORD_ENV} (the generated password of 'admin' is "
                        f"in {admin_password_file(self.paths)} on the master)"
                    )
                verify: bool | str = False if self.insecure else (self.ca_cert or True)
                self._client = CorralClient(
                    url=self.api_url, user=self.user, password=password, verify=verify
                )
            else:
                self._client = CorralClient.for_paths(self.paths)
        return self._client

    def close(self) -> None:
        """Release the client."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def print(self, text: str = "") -> None:
        """Print plain text on stdout (no markup)."""
        self.out.print(text, markup=False, highlight=False, emoji=False)

    def error(self, text: str) -> None:
        """Print an error on stderr."""
        self.err.print(text, markup=False, highlight=False, emoji=False)


def paths_from(root: str | None) -> Paths:
    """Paths from ``--root`` or ``$CORRAL_ROOT``."""
    return Paths(os.path.abspath(root)) if root else Paths.from_env()


def run_command(cli: Cli, action: Callable[[], int | None]) -> int:
    """Run ``action`` and turn failures into messages and exit codes.

    Never raises (except SystemExit from the caller's parser): usage errors and Corral errors
    are printed on stderr, Ctrl-C gives 130.
    """
    try:
        code = action()
        return EXIT_SUCCESS if code is None else code
    except ExitCode as exc:
        return exc.code
    except UsageError as exc:
        cli.error(f"{'' if cli.ganeti else 'error: '}{exc}")
        return EXIT_FAILURE
    except CorralError as exc:
        cli.error(f"Failure: {exc}" if cli.ganeti else f"error: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        cli.error("interrupted")
        return 130
    finally:
        cli.close()


def stdin_is_tty() -> bool:
    """Whether we can ask the user a question."""
    return sys.stdin.isatty()

"""`python -m tasks.serving.launch serve ...`: `bentoml serve` with no control endpoint on TCP.

BentoML's process manager (circus) takes commands such as `add --start <program>` on its control
endpoint, without authentication, and BentoML always binds it (and its pub/sub) to a loopback TCP port:
any local user could run programs as the service's user. Here the same arbiter binds both to Unix
sockets in a folder only this user can enter (mkdtemp: 0700), removed when the server stops. Nothing
else changes: the arguments are bentoml's own, and the service's HTTP port is the only TCP listener.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import typing as t


def private_arbiter(watchers: list, *, threaded: bool = False, **kwargs: t.Any):
    """bentoml._internal.utils.circus.create_standalone_arbiter, with ipc:// endpoints in a 0700 folder."""
    from bentoml._internal.utils.circus import Arbiter, ThreadedArbiter

    folder = tempfile.mkdtemp(prefix="genloop-circus-")
    os.chmod(folder, 0o700)
    arbiter = (ThreadedArbiter if threaded else Arbiter)(
        watchers,
        endpoint=f"ipc://{folder}/control",
        pubsub_endpoint=f"ipc://{folder}/pubsub",
        check_delay=kwargs.pop("check_delay", 10),  # BentoML's own value
        **kwargs,
    )
    arbiter.exit_stack.callback(shutil.rmtree, folder, ignore_errors=True)
    return arbiter


def main(argv: list[str] | None = None) -> None:
    import bentoml._internal.utils.circus as circus

    # BentoML imports this inside its serve functions, at call time: replacing it here takes effect.
    circus.create_standalone_arbiter = private_arbiter
    from bentoml_cli.cli import cli

    sys.argv = ["bentoml", *(sys.argv[1:] if argv is None else argv)]
    cli()


if __name__ == "__main__":
    main()

"""`python -m tasks.serving.launch serve ...`: `bentoml serve`, made safe to run and to replace.

- No control endpoint on TCP. BentoML's process manager (circus) takes commands such as
  `add --start <program>` on its control endpoint, without authentication, and BentoML always binds it
  (and its pub/sub) to a loopback TCP port: any local user could run programs as the service's user.
  Here the same arbiter binds both to Unix sockets in a folder only this user can enter (mkdtemp:
  0700), removed when the server stops. The service's HTTP port is the only TCP listener.
- The HTTP socket is opened with SO_REUSEPORT, so a new deployment can listen on the same port while
  the old one still serves (tasks/deploy.py); only processes of the same user can share it.
- SIGTERM drains: the API workers stop first (uvicorn stops accepting and finishes the requests in
  flight, which still reach the model), and only then the model workers. Before that the port is
  handed over: while a newer server shares it, a classic BPF program on the port's SO_REUSEPORT group
  sends every new connection to that server (Linux), and the old workers accept what had queued for
  HANDOVER_S. Leaving the group by shutdown() alone resets the connections in its accept queue, which
  a client sees as "disconnected without a response" (1 in ~660 requests of a deploy under load).
  Alone on the port, a socket filter drops new connection attempts instead (they are refused once the
  server is gone) while the workers accept what had queued. The workers then have READ_S to read the
  requests of the connections they accepted last: uvicorn's stop closes a connection whose request it
  has not read yet, which its client sees as "disconnected without a response" too.
- With GENLOOP_LOG_FILE set, the server's and its workers' output goes to that file, rotated at
  LOG_BYTES with LOG_BACKUPS old copies kept.
The arguments are bentoml's own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import sys
import tempfile
import typing as t
from pathlib import Path

LOG_BYTES, LOG_BACKUPS = 10 << 20, 3
API_WATCHER = "service"  # BentoML's name for the API server's workers (_bentoml_impl/server/serving.py)
HANDOVER_S = 0.5  # the old workers accept what queued before the new connections went elsewhere
READ_S = 1.0  # then read the requests of the connections accepted last, before uvicorn stops
# Linux's numbers (asm-generic/socket.h); Python's socket module has none of them
SO_ATTACH_FILTER, SO_ATTACH_REUSEPORT_CBPF, SO_DETACH_REUSEPORT_BPF = 26, 51, 68
_elders: dict[int, set[int]] = {}  # socket inode -> inodes already listening on its port when it bound


def _listening(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on `port` (Linux's /proc/net tables; empty elsewhere)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                f = row.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    found.add(int(f[9]))
    return found


def _program(sock: socket.socket, option: int, value: int) -> None:
    """Attach the one-instruction classic BPF program `return value` with SOL_SOCKET `option`."""
    import ctypes

    code = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, value))  # BPF_RET | BPF_K
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("@HP", 1, ctypes.addressof(code)))  # sock_fprog


def _steer(sock: socket.socket, index: int) -> None:
    """Send every new connection of the socket's SO_REUSEPORT group to its `index`-th socket. The
    group keeps its sockets in the order they joined; one that leaves takes the last one's place."""
    _program(sock, SO_ATTACH_REUSEPORT_CBPF, index)


def _hand_over(sock: socket.socket) -> bool:
    """Steer the port's new connections to the one other server on it; False when there is none
    (or more than one). Its place in the group: 1 if it was there when this one bound, else 0."""
    mine = os.fstat(sock.fileno()).st_ino
    others = _listening(sock.getsockname()[1]) - {mine}
    if len(others) != 1:
        return False
    try:
        _steer(sock, 0 if others <= _elders.get(mine, set()) else 1)
    except OSError:
        return False
    return True


def _stop_api_first(self, close_output_streams=False, watcher_iter_func=None):
    """circus stops every watcher at once; the API workers go first here, so the requests they are
    finishing can still reach the model workers."""
    from tornado import gen

    @gen.coroutine
    def run():
        tcp = [sock for sock in self.sockets.values() if not sock.is_unix]
        handed = [sock for sock in tcp if _hand_over(sock)]
        if handed:
            print(
                "stopping: new connections go to the newer server on this port", file=sys.stderr, flush=True
            )
        for sock in tcp:
            if sock not in handed:  # alone on the port: new connections wait (their SYNs dropped), then
                with contextlib.suppress(OSError):  # are refused once it closes
                    _program(sock, SO_ATTACH_FILTER, 0)
        if tcp:  # what queued is accepted, and each request read: uvicorn finishes those it has read
            yield gen.sleep(HANDOVER_S)
        for sock in tcp:  # leave the port (its queue is empty now)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        if tcp:  # a request read before the workers stop is in flight, and answered
            yield gen.sleep(READ_S)
        watchers = list((watcher_iter_func or self.iter_watchers)(reverse=False))
        front = [w for w in watchers if w.name == API_WATCHER]
        yield gen.multi([w._stop(close_output_streams) for w in front])
        yield gen.multi([w._stop(close_output_streams) for w in watchers if w not in front])

    return run()


def private_arbiter(watchers: list, *, threaded: bool = False, **kwargs: t.Any):
    """bentoml._internal.utils.circus.create_standalone_arbiter, with ipc:// endpoints in a 0700 folder
    and a stop that drains."""
    from bentoml._internal.utils.circus import Arbiter, ThreadedArbiter

    folder = tempfile.mkdtemp(prefix="genloop-circus-")
    os.chmod(folder, 0o700)
    base = ThreadedArbiter if threaded else Arbiter
    draining = type(f"Draining{base.__name__}", (base,), {"_stop_watchers": _stop_api_first})
    arbiter = draining(
        watchers,
        endpoint=f"ipc://{folder}/control",
        pubsub_endpoint=f"ipc://{folder}/pubsub",
        check_delay=kwargs.pop("check_delay", 10),  # BentoML's own value
        **kwargs,
    )
    arbiter.exit_stack.callback(shutil.rmtree, folder, ignore_errors=True)
    return arbiter


def _share_tcp_ports() -> None:
    """SO_REUSEPORT on circus's TCP sockets (not on Unix ones, which have no port to share). Set on the
    socket itself: circus's own `so_reuseport` means one socket per worker, which BentoML's workers
    (handed the arbiter's socket by fd) never open."""
    from circus.sockets import CircusSocket

    original, bind = CircusSocket.__init__, CircusSocket.bind_and_listen

    def init(self, *args: t.Any, **kwargs: t.Any) -> None:
        original(self, *args, **kwargs)
        if not self.is_unix:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)

    def bind_and_listen(self) -> None:
        elders = set() if self.is_unix else _listening(self.port)
        bind(self)
        if not self.is_unix:
            _elders[os.fstat(self.fileno()).st_ino] = elders
            with contextlib.suppress(OSError):  # a handover's program outlives the server that left:
                self.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)  # new ones spread again

    CircusSocket.__init__ = init
    CircusSocket.bind_and_listen = bind_and_listen


def _rotate_output(path: str) -> None:
    """Send fds 1 and 2 (inherited by every worker circus starts) through a pipe into a rotating file."""
    import logging
    import threading
    from logging.handlers import RotatingFileHandler

    handler = RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS)
    handler.setFormatter(logging.Formatter("%(message)s"))
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "r", errors="replace") as lines:
            for line in lines:
                handler.emit(logging.makeLogRecord({"msg": line.rstrip("\n")}))

    threading.Thread(target=pump, daemon=True, name="log-rotation").start()


def main(argv: list[str] | None = None) -> None:
    import bentoml._internal.utils.circus as circus

    # BentoML imports this inside its serve functions, at call time: replacing it here takes effect.
    circus.create_standalone_arbiter = private_arbiter
    _share_tcp_ports()
    if os.environ.get("GENLOOP_LOG_FILE"):
        _rotate_output(os.environ["GENLOOP_LOG_FILE"])
    from bentoml_cli.cli import cli

    sys.argv = ["bentoml", *(sys.argv[1:] if argv is None else argv)]
    cli()


if __name__ == "__main__":
    main()

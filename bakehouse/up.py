"""`bakehouse up`: one machine, whole stack. Prefect server on 127.0.0.1, work pools, deployments,
one worker per pool, and the API submitting through the deployments. Ctrl-C or SIGTERM stops
everything it started (each child runs in its own process group, which is terminated, then killed).

Killed itself (SIGKILL: an OOM kill, a lost terminal multiplexer), it cannot reap: each child asks
the kernel for a SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG), and the process groups it
started are written down, so the next `up` on the same Prefect port ends whatever of them is left
before it starts (instead of failing on a busy port).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from repo_store.settings import get_settings

PROJECT = Path(__file__).resolve().parents[1]  # where prefect.yaml lives
POOLS = ("bakehouse-cpu", "bakehouse-gpu")
PR_SET_PDEATHSIG = 1  # prctl option, linux/prctl.h


class Stack:
    def __init__(self, record: Path | None = None) -> None:
        self.children: list[subprocess.Popen] = []
        self._logs: list = []
        self.record = record  # where the process groups are written down (see clear_stale_stack)

    def start(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        handle = open(log, "ab")  # noqa: SIM115 - lives as long as the child; closed in stop()
        self._logs.append(handle)
        child = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=handle, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        self.children.append(child)
        if self.record is not None:
            self.record.write_text(json.dumps([c.pid for c in self.children]))
        return child

    def stop(self) -> None:
        for child in self.children:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        for handle in self._logs:
            handle.close()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, however it dies (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def clear_stale_stack(record: Path) -> list[int]:
    """End the process groups an earlier `up` wrote down and left running; returns those it ended.
    Only groups whose leader still runs a Prefect command of ours are touched."""
    try:
        groups = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    ended = []
    for group in groups:
        try:
            command = Path(f"/proc/{group}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone already
        if "prefect" in command and ("server start" in command or "worker start" in command):
            _signal_pgid(group, signal.SIGTERM)
            ended.append(group)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{group}").exists() for group in ended) and time.monotonic() < deadline:
        time.sleep(0.2)
    for group in ended:
        _signal_pgid(group, signal.SIGKILL)
    record.unlink(missing_ok=True)
    return ended


def _signal_pgid(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, seconds: float, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with code {child.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not healthy after {seconds:.0f}s")


def prefect_env(api_url: str, data_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",  # no pop-up over a self-hosted UI
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "1"),
        "BAKEHOUSE_DATA": data_url,
    }


def deploy(env: dict[str, str]) -> None:
    """Work pools (idempotent) and the deployments of prefect.yaml."""
    for pool in POOLS:
        _prefect(["work-pool", "create", pool, "--type", "process", "--overwrite"], env)
    _prefect(["--no-prompt", "deploy", "--all"], env)


def _prefect(arguments: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "prefect", *arguments], env=env, cwd=PROJECT, capture_output=True, text=True)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"prefect {' '.join(arguments)} failed:\n" + "\n".join(output))


def start_stack(stack: Stack, *, data_url: str, prefect_port: int, logs: Path, workers_per_pool: int = 1) -> dict[str, str]:
    """Prefect server, pools, deployments and workers. Returns the environment that reaches them."""
    logs.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    env = prefect_env(api_url, data_url)
    server = stack.start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(prefect_port), "--analytics-off"], env, logs / "prefect-server.log")
    wait_healthy(f"{api_url}/health", 120, server)
    deploy(env)
    for pool in POOLS:
        for index in range(workers_per_pool):
            # A GPU worker runs one shard at a time (one vLLM engine per GPU); CPU work is light.
            limit = ["--limit", "1"] if pool == "bakehouse-gpu" else []
            stack.start([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", f"{pool}-{index}", *limit],
                        env, logs / f"worker-{pool}-{index}.log")
    return env


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_up(*, port: int, prefect_port: int, data_url: str, stimuli_per_shard: int) -> None:
    import uvicorn

    from bakehouse.api import create_app
    from bakehouse.runner import PrefectRunner
    from repo_store import Store

    store = Store(data_url)
    data_url = store.url if "://" in store.url else str(Path(store.url).resolve())
    logs = get_settings().log_root
    logs.mkdir(parents=True, exist_ok=True)
    record = logs / f"up-{prefect_port}.json"
    if ended := clear_stale_stack(record):
        print(f"Ended what an earlier `bakehouse up` left running (process groups {ended})", flush=True)
    stack = Stack(record)
    # SIGTERM and SIGHUP (a closed terminal or ssh session) stop us like Ctrl-C, so the `finally`
    # below always reaps the children (uvicorn installs its own SIGINT/SIGTERM handlers while it
    # serves, and returns on either).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        env = start_stack(stack, data_url=data_url, prefect_port=prefect_port, logs=logs)
        os.environ.update(PREFECT_API_URL=env["PREFECT_API_URL"], BAKEHOUSE_DATA=data_url)
        print(f"Prefect UI   http://127.0.0.1:{prefect_port}", flush=True)
        print(f"API          http://127.0.0.1:{port}  (docs at /docs)", flush=True)
        print(f"Viewer       http://127.0.0.1:{port}/ui/", flush=True)
        print(f"Logs         {logs}", flush=True)
        app = create_app(Store(data_url), PrefectRunner(stimuli_per_shard))
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the reaping short (stop() escalates to SIGKILL on its own).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
        record.unlink(missing_ok=True)

"""Flower's deployment runtime on the project's apps: a SuperLink with the ServerApp, SuperNodes.

``vfmseg federated server`` starts a SuperLink (Flower's server process; it runs each submitted
ServerApp in a subprocess), writes a Flower app folder whose components are this package's
:data:`~.apps.server_app` and :data:`~.apps.client_app` and whose run config carries the run's
settings, submits it with ``flwr run`` to its own SuperLink, waits until the run ends and stops
the SuperLink. ``vfmseg federated site`` starts a SuperNode (Flower's site process) with node config
``data`` and ``model``; it connects out to the SuperLink and runs the ClientApp for each message.

Nothing is fetched at run time: the SuperLink runs with runtime dependency installation disabled
(SuperNodes have it off by default), the app's code is the installed napari-vfmseg, and the app
bundle that ``flwr run`` submits holds only its ``pyproject.toml``. Flower's own state (its CLI
configuration) lives in a private ``FLWR_HOME`` folder of the run.

Every process is started in its own session, so :func:`stop` ends it and the children it spawned
(SuperExec, ServerApp, ClientApp) by its process-group id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from napari_vfmseg.io.atomic import write_text_atomic

__all__ = ["TLSFiles", "free_port", "flower_env", "start_superlink", "start_supernode", "write_app",
           "submit_run", "wait_for_run", "wait_for_port", "stop"]

APP_NAME = "vfmseg-federated-lora"


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for TLS: the CA certificate, and the server's certificate and private key."""

    ca: Path
    cert: Optional[Path] = None
    key: Optional[Path] = None

    def check(self, server: bool) -> None:
        for path in (self.ca, self.cert, self.key) if server else (self.ca,):
            if path is None:
                raise ValueError("TLS on the server needs a CA certificate, a certificate and a private key")
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: TLS file not found")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float, process: Optional[subprocess.Popen] = None) -> None:
    """Return once ``host:port`` accepts connections; raise if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with code {process.returncode} before {host}:{port} opened")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{host}:{port} did not open within {timeout_s:.0f} s")


def flower_env(flwr_home: Path, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment for Flower's processes: this interpreter's scripts first on PATH (the SuperLink
    spawns ``flower-superexec`` by name), ``FLWR_HOME`` private to the run."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: Flower's '{name}' is not installed; install napari-vfmseg[federated]")
    return str(path)


def _launch(command: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")
    try:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(env),
                                start_new_session=True)
    finally:
        handle.close()


def start_superlink(work_dir: Path, host: str = "127.0.0.1", port: int = 9092, tls: Optional[TLSFiles] = None,
                    node_auth: bool = False) -> subprocess.Popen:
    """Start ``flower-superlink`` (Fleet, Control and runtime APIs on ``host:port``); log in
    ``work_dir/superlink.log``. Without ``tls`` it runs insecure (plain HTTP): loopback only."""
    command = [_script("flower-superlink"), "--host", host, "--port", str(port),
               "--disable-runtime-dependency-installation"]
    if tls is None:
        command.append("--insecure")
    else:
        tls.check(server=True)
        command += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    if node_auth:
        command.append("--enable-supernode-auth")
    return _launch(command, Path(work_dir) / "superlink.log", flower_env(Path(work_dir) / "flwr-home"))


def _node_config(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return " ".join(parts)


def start_supernode(work_dir: Path, server: str, data: str | Path, model: str, name: str = "",
                    runtime_port: Optional[int] = None, root_certificates: Optional[Path] = None,
                    auth_private_key: Optional[Path] = None, threads: int = 0, foreground: bool = False,
                    max_wait_s: Optional[float] = None) -> subprocess.Popen:
    """Start ``flower-supernode`` for the site whose data are in ``data`` (see :mod:`.apps`)."""
    data = Path(data).resolve()
    config = {"data": str(data), "model": model, "name": name or data.name}
    if threads:
        config["threads"] = int(threads)
    command = [_script("flower-supernode"), "--superlink", server, "--node-config", _node_config(config),
               "--port", str(runtime_port or free_port())]
    if root_certificates is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(root_certificates)]
    if auth_private_key is not None:
        command += ["--auth-supernode-private-key", str(auth_private_key)]
    if max_wait_s:
        command += ["--max-wait-time", str(int(max_wait_s))]
    env = flower_env(Path(work_dir) / "flwr-home")
    if foreground:
        return subprocess.Popen(command, env=env, start_new_session=False)
    return _launch(command, Path(work_dir) / f"supernode-{config['name']}.log", env)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_app(app_dir: Path, run_config: Mapping[str, Any]) -> Path:
    """A Flower app folder: a ``pyproject.toml`` whose components are the installed apps and whose
    ``[tool.flwr.app.config]`` is ``run_config``; no code of its own."""
    from napari_vfmseg import __version__

    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", f'name = "{APP_NAME}"', f'version = "{__version__}"', "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "napari-vfmseg"', "",
        "[tool.flwr.app.components]",
        'serverapp = "napari_vfmseg.federated.apps:server_app"',
        'clientapp = "napari_vfmseg.federated.apps:client_app"', "",
        "[tool.flwr.app.config]",
    ] + [f'"{key}" = {_toml_value(value)}' for key, value in run_config.items()]
    app_dir = Path(app_dir)
    write_text_atomic(app_dir / "pyproject.toml", "\n".join(lines) + "\n")
    return app_dir


def _write_connection(flwr_home: Path, address: str, root_certificates: Optional[Path]) -> None:
    lines = ["[superlink]", 'default = "vfmseg"', "", "[superlink.vfmseg]", f'address = "{address}"']
    lines.append(f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true")
    write_text_atomic(flwr_home / "config.toml", "\n".join(lines) + "\n")


def _flwr(args: Sequence[str], work_dir: Path, timeout_s: float) -> dict:
    done = subprocess.run([_script("flwr"), *args, "--format", "json"], capture_output=True, text=True,
                          timeout=timeout_s, env=flower_env(Path(work_dir) / "flwr-home"), cwd=str(work_dir))
    text = done.stdout.strip()
    start = text.find("{")
    try:
        reply = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        reply = {}
    if done.returncode != 0 or not reply.get("success", False):
        raise RuntimeError(f"flwr {' '.join(args[:1])} failed: {(reply.get('error-message') or done.stderr or text)[-500:]}")
    return reply


def submit_run(work_dir: Path, address: str, run_config: Mapping[str, Any],
               root_certificates: Optional[Path] = None, timeout_s: float = 120.0) -> int:
    """Write the app folder and submit it to the SuperLink at ``address``; returns the run id."""
    work_dir = Path(work_dir)
    _write_connection(work_dir / "flwr-home", address, root_certificates)
    app_dir = write_app(work_dir / "app", run_config)
    reply = _flwr(["run", str(app_dir), "vfmseg"], work_dir, timeout_s)
    return int(reply["run-id"])


def wait_for_run(work_dir: Path, run_id: int, timeout_s: float, poll_s: float = 2.0,
                 superlink: Optional[subprocess.Popen] = None) -> dict:
    """Poll ``flwr ls`` until run ``run_id`` has finished; returns Flower's record of the run."""
    deadline = time.monotonic() + timeout_s
    while True:
        if superlink is not None and superlink.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with code {superlink.returncode} during run {run_id}")
        runs = _flwr(["ls", "vfmseg", "--run-id", str(run_id)], Path(work_dir), 60.0).get("runs", [])
        if runs and str(runs[0].get("status", "")).startswith("finished"):
            return runs[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)


def stop(process: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """End ``process`` and its process group (started by :func:`_launch` in its own session) by id:
    SIGTERM, then SIGKILL after ``timeout_s``. Returns the exit code."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout_s)
    else:
        try:  # children the process left behind in its group
            os.killpg(process.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    return int(process.returncode)

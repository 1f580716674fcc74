"""Real servers for the tests: gunicorn running faceapp, and redis-server, on loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def app_env(instance: str, model_dir: str, **settings: str) -> dict[str, str]:
    """The environment of a served faceapp on the tiny model: FACEAPP_<KEY> for each setting."""
    env = {
        "FACEAPP_INSTANCE_PATH": instance,
        "FACEAPP_MODEL_NAME": model_dir,
        "FACEAPP_MODEL_AUTO_PULL": "false",
        # As the in-process test config: DTYPE=auto would pick by a timing, so a served app and
        # a local run (or two runs) could answer from different dtypes and model versions.
        "FACEAPP_DTYPE": "float32",
    }
    env.update({f"FACEAPP_{key}": value for key, value in settings.items()})
    return env


@contextmanager
def gunicorn(
    env: dict[str, str], workers: int = 2, log_path: str | None = None, port: int | None = None
):
    """Run `gunicorn -c gunicorn.conf.py wsgi:app` as `make run` does; yield its base URL.

    `port` (default: a free one) lets a test restart a service where a browser left it."""
    port = port or free_port()
    full_env = {
        **os.environ,
        **env,
        "PORT": str(port),
        "WORKERS": str(workers),
        "HF_HUB_OFFLINE": "1",
    }
    gunicorn_bin = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [gunicorn_bin, "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, "gunicorn exited early"
            try:
                return requests.get(base + "/api/health", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                # Timeout: the socket accepts before a worker has finished importing the app.
                return False

        wait_until(up, 60, "gunicorn answering /api/health")
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@contextmanager
def redis_server(tmp_dir: str, *, port: int | None = None, appendonly: bool = False):
    """A throwaway redis-server on a loopback port (a free one unless given); yields its
    redis:// URL. `appendonly` keeps every write in `tmp_dir`, so a restart on the same port and
    folder comes back with the data."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            tmp_dir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(answers, 10, "redis-server answering PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def write_nginx_config(upstream: str, tmp_dir: str, port: int, edit=None) -> str:
    """deploy/nginx-faceapp.conf in a whole nginx.conf under `tmp_dir`; returns its path.

    `edit(site) -> site` may change the server block first (a test of one of its rules)."""
    with open(os.path.join(ROOT, "deploy", "nginx-faceapp.conf"), encoding="utf-8") as fh:
        site = (
            fh.read()
            .replace("127.0.0.1:8000", upstream)
            .replace("listen 80;", f"listen 127.0.0.1:{port};")
        )
    if edit is not None:
        site = edit(site)
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(tmp_dir, name), exist_ok=True)
    conf = os.path.join(tmp_dir, "nginx.conf")
    with open(conf, "w", encoding="utf-8") as fh:
        # As root, nginx's workers would drop to `nobody` and lose access to the private tmp dir.
        user = "user root;" if os.geteuid() == 0 else ""
        fh.write(f"""
{user}
worker_processes 1;
pid {tmp_dir}/nginx.pid;
error_log {tmp_dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_dir}/access.log;
    client_body_temp_path {tmp_dir}/client_body;
    proxy_temp_path {tmp_dir}/proxy;
    fastcgi_temp_path {tmp_dir}/fastcgi;
    uwsgi_temp_path {tmp_dir}/uwsgi;
    scgi_temp_path {tmp_dir}/scgi;
    {site}
}}
""")
    return conf


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


@contextmanager
def nginx(upstream: str, tmp_dir: str, edit=None):
    """nginx with deploy/nginx-faceapp.conf in front of `upstream` (host:port); yields its URL."""
    binary = nginx_binary()
    port = free_port()
    conf = write_nginx_config(upstream, tmp_dir, port, edit)
    process = subprocess.Popen(
        [binary, "-c", conf, "-p", tmp_dir, "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, "nginx exited early"
            try:
                return requests.get(base + "/api/health", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # a busy machine: ask again
                return False

        wait_until(up, 20, "nginx answering")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def celery_worker(env: dict[str, str], log_path: str, concurrency: int = 1, wait: bool = True):
    """`flask --app wsgi worker --concurrency N` in its own process group; yields the Popen.

    Ready once Celery logs "ready." (:func:`wait_worker_ready`; `wait=False` leaves that to the
    caller, so that several start at once); stopped with SIGTERM to the group, then SIGKILL."""
    flask_bin = os.path.join(os.path.dirname(sys.executable), "flask")
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [flask_bin, "--app", "wsgi", "worker", "--concurrency", str(concurrency)],
        cwd=ROOT,
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: a test can kill the whole worker at once
    )
    try:
        if wait:
            wait_worker_ready(process, log_path)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def wait_worker_ready(process: subprocess.Popen, log_path: str, timeout: float = 120) -> None:
    """Wait until a worker started by :func:`celery_worker` has logged that it is ready."""

    def ready() -> bool:
        assert process.poll() is None, f"the worker exited early; see {log_path}"
        with open(log_path, "rb") as fh:
            return b" ready." in fh.read()

    wait_until(ready, timeout, "the Celery worker saying ready")


@contextmanager
def photo_site(files: dict[str, bytes], slow: float = 0.0):
    """A threaded HTTP server on loopback serving `files` by name; a name asked for under
    ``slow/`` comes after `slow` seconds (a job that lasts long enough to interrupt). Yields
    its base URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            name = self.path.lstrip("/")
            if name.startswith("slow/"):
                time.sleep(slow)
                name = name.removeprefix("slow/")
            data = files.get(name)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

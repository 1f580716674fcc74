"""Gunicorn settings for faceapp (`make run`); PORT, HOST, WORKERS and THREADS override them.

These environment variables are gunicorn's, not the app's (docs/API.md, "Configuration" lists
both kinds); each is parsed like a FACEAPP_ setting, and a bad one stops the start in one line.
"""

import os
import sys

from faceapp import config as faceapp_config


def _env(name, default, kind=str, least=None):
    """The environment variable ``name`` as ``kind``; unset or empty: ``default``."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = faceapp_config.convert(name, raw, kind)
        if least is not None and value < least:
            raise faceapp_config.SettingError(f"{name}: {raw!r} is below {least}")
    except faceapp_config.SettingError as exc:
        sys.exit(f"Error: {exc}")  # SystemExit: gunicorn prints no traceback for it
    return value


bind = f"{_env('HOST', '127.0.0.1')}:{_env('PORT', 8000, int)}"
workers = _env("WORKERS", 2, int, least=1)
# Threads let a worker wait on a slow image_url while another request runs; the model's own
# thread pool is sized to cores / workers (faceapp.face_models.torch_threads). The worker class
# is gunicorn's gthread plus a deadline on reading headers (and on each body read), so that a
# few slow clients cannot hold every thread: see faceapp/gunicorn_worker.py. gunicorn must still
# not face the internet directly; nginx in front buffers whole requests (deploy/).
worker_class = _env("WORKER_CLASS", "faceapp.gunicorn_worker.HeaderDeadlineWorker")
threads = _env("THREADS", 8, int, least=1)
worker_connections = 1000  # gthread's cap on open connections per worker (idle keep-alives too)
# The app is created, and the model loaded, in each worker after fork: a model used in the
# master hangs workers (gunicorn #2478, pytorch #49555) and breaks CUDA. The master only imports
# the libraries (on_starting below), which runs no torch operation.
preload_app = False
timeout = 120
graceful_timeout = 30  # SIGTERM: in-flight requests get this long to finish
keepalive = 5  # an idle kept-alive connection costs no thread, and is closed after 5 s
# Recycle workers now and then, staggered so they never all restart at once. Only requests that
# did work (validate, analyze, the tester's upload and Analyze) count: post_request below takes
# the others back, so 404s, 401s, 429s and probes never recycle a worker.
max_requests = _env("MAX_REQUESTS", 1000, int)
max_requests_jitter = max(1, max_requests // 10)
raw_env = [f"FACEAPP_WORKERS={workers}"]
accesslog = "-"
errorlog = "-"
# One knob for faceapp's and gunicorn's logs: FACEAPP_LOG_LEVEL (LOG_LEVEL, the older name, still
# works when FACEAPP_LOG_LEVEL is unset). The master checks it with the other settings.
loglevel = (_env("FACEAPP_LOG_LEVEL", "") or _env("LOG_LEVEL", "info")).strip().lower()
if loglevel.upper() not in faceapp_config.LOG_LEVELS:
    sys.exit(f"Error: LOG_LEVEL: {loglevel!r} is not one of {', '.join(faceapp_config.LOG_LEVELS)}")
if not os.environ.get("FACEAPP_LOG_LEVEL", "").strip():
    raw_env.append(f"FACEAPP_LOG_LEVEL={loglevel}")
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# The access log escapes control characters and never writes a key (faceapp/request_log.py).
logger_class = "faceapp.request_log.AccessLogger"
# gunicorn 24+ opens a control socket at one fixed path per user; two instances on a machine
# would fight over it, and faceapp does not use it.
control_socket_disable = True


def post_fork(server, worker):
    """Fix glibc's malloc thresholds in the worker (faceapp/gunicorn_worker.py: tune_malloc)."""
    from faceapp.gunicorn_worker import tune_malloc

    tune_malloc()


def post_worker_init(worker):
    """Load this worker's model in the background: health answers at once, ready once loaded."""
    from faceapp import faces
    from faceapp.decoding import return_large_buffers_to_the_os
    from faceapp.face_models import models

    return_large_buffers_to_the_os()  # so the decode budget bounds what the worker holds
    models.load_in_background(worker.wsgi)
    faces.prepare(worker.wsgi)  # a missing YuNet is pulled in the background from now on


# Prometheus metrics (faceapp/metrics.py): the workers write their figures to files in one
# folder, which must be empty before the first worker starts; a dead worker's gauges go.
_metrics_dir = None


def on_starting(server):
    """Check every setting before any worker exists, give the workers an empty
    PROMETHEUS_MULTIPROC_DIR (a temporary one unless it is set), and import the libraries they
    share (PRELOAD_LIBRARIES=0 leaves that to each worker)."""
    global _metrics_dir
    from faceapp import PROJECT_ROOT

    try:
        # One "Error: FACEAPP_X: ..." line and exit 1 (gunicorn's answer to a RuntimeError here),
        # where a worker that fails to boot would log a traceback and be started again.
        faceapp_config.check_settings(faceapp_config.instance_path(PROJECT_ROOT))
    except faceapp_config.SettingError as exc:
        raise RuntimeError(str(exc)) from None
    from faceapp.metrics import prepare_multiprocess_dir

    _metrics_dir = prepare_multiprocess_dir()
    if _env("PRELOAD_LIBRARIES", True, bool):
        # torch and transformers take seconds to import: once here, not in every worker.
        from faceapp.preload import import_libraries

        seconds, failed = import_libraries()
        server.log.info("imported torch, transformers and faceapp in %.1f s", seconds)
        if failed:
            server.log.warning("could not import %s: the workers will say why", ", ".join(failed))


def post_request(worker, req, environ, resp):
    """A request that did no work (faceapp.request_log.count_as_work) does not count toward
    MAX_REQUESTS: a flood of cheap requests must not make workers reload their model."""
    from faceapp.request_log import did_work

    if not did_work(environ):
        worker.nr -= 1


def child_exit(server, worker):
    """A worker exited (recycled or killed): its per-worker gauges go, its counts stay."""
    from faceapp.metrics import worker_exited

    worker_exited(worker.pid)


def on_exit(server):
    from faceapp.metrics import remove_multiprocess_dir

    remove_multiprocess_dir(_metrics_dir)


def worker_int(worker):
    """SIGINT/SIGQUIT: let the inference thread finish what is queued before the worker goes."""
    _drain(worker)


def worker_exit(server, worker):
    """After the last request (SIGTERM's graceful stop): drain and join the inference thread."""
    _drain(worker)


def _drain(worker):
    from faceapp.engine import engine

    if getattr(worker, "wsgi", None) is not None:  # None when the app failed to load
        engine.stop(worker.wsgi, timeout=graceful_timeout)

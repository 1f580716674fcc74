"""Gunicorn settings for faceapp (`make run`); PORT, HOST, WORKERS and THREADS override them."""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WORKERS", "2"))
# Threads let a worker wait on a slow image_url while another request runs; the model's own
# thread pool is sized to cores / workers (faceapp.face_models.torch_threads). The worker class
# is gunicorn's gthread plus a deadline on reading headers (and on each body read), so that a
# few slow clients cannot hold every thread: see faceapp/gunicorn_worker.py. gunicorn must still
# not face the internet directly; nginx in front buffers whole requests (deploy/).
worker_class = os.environ.get("WORKER_CLASS", "faceapp.gunicorn_worker.HeaderDeadlineWorker")
threads = int(os.environ.get("THREADS", "8"))
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
max_requests = int(os.environ.get("MAX_REQUESTS", "1000"))
max_requests_jitter = max(1, max_requests // 10)
raw_env = [f"FACEAPP_WORKERS={workers}"]
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# The access log escapes control characters and never writes a key (faceapp/request_log.py).
logger_class = "faceapp.request_log.AccessLogger"
# gunicorn 24+ opens a control socket at one fixed path per user; two instances on a machine
# would fight over it, and faceapp does not use it.
control_socket_disable = True


def post_worker_init(worker):
    """Load this worker's model in the background: health answers at once, ready once loaded."""
    from faceapp.face_models import models

    models.load_in_background(worker.wsgi)


# Prometheus metrics (faceapp/metrics.py): the workers write their figures to files in one
# folder, which must be empty before the first worker starts; a dead worker's gauges go.
_metrics_dir = None


def on_starting(server):
    """Give the workers an empty PROMETHEUS_MULTIPROC_DIR (a temporary one unless it is set),
    and import the libraries they share (PRELOAD_LIBRARIES=0 leaves that to each worker)."""
    global _metrics_dir
    from faceapp.metrics import prepare_multiprocess_dir

    _metrics_dir = prepare_multiprocess_dir()
    from faceapp.schemas import yes_no

    try:
        preload = yes_no(os.environ.get("PRELOAD_LIBRARIES") or "1")
    except ValueError as exc:
        raise ValueError(f"PRELOAD_LIBRARIES: {exc}") from None
    if preload:
        # torch and transformers take seconds to import: once here, not in every worker.
        from faceapp.face_models import import_libraries

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

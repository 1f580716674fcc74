"""Configuration: the defaults, and the order they are overridden in.

Every key, its default and meaning: docs/API.md, "Configuration".

Order: these defaults, then ``instance/config.py``, then ``FACEAPP_<KEY>`` environment variables
(or the test mapping given to ``create_app``). Nothing here runs at import time.

Every setting is converted once, here, by its declared type (its default's type, or
:data:`NULLABLE` for the settings whose default is None), whichever source it came from. A
value that does not parse stops the start with a :class:`SettingError` naming the key and the
value: ``FACEAPP_URL_ALLOW_PRIVATE_NETWORKS=False`` must mean false, never the true of a
non-empty string (Flask's ``from_prefixed_env`` alone parses JSON only, so ``False``, ``no`` and
``off`` stayed strings). Code that reads ``app.config`` never converts a value again.
"""

from __future__ import annotations

import math
import os
import secrets
from typing import Any

from flask import Flask

from faceapp.atomic import create_once

ENV_PREFIX = "FACEAPP_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingError(ValueError):
    """A setting whose value does not parse; the message names the key and the value."""


DEFAULTS: dict[str, Any] = {
    # The model (faceapp/face_models.py)
    "MODEL_NAME": "openai/clip-vit-base-patch32",
    "MODELS_DIR": None,  # None: <instance>/models
    "DEVICE": "auto",
    # auto: bfloat16 where the CPU has native bf16 and a trial at the first start finds it faster
    # and close to float32 (faceapp/auto_dtype.py), else float32; or float32, bfloat16, float16
    # (GPU), int8 (ONNX Runtime, CPU).
    "DTYPE": "auto",
    "MODEL_AUTO_PULL": True,  # a hub id missing from MODELS_DIR is pulled at first load
    "LOAD_MODEL_ON_START": True,  # load in each worker right after fork (gunicorn hook)
    "WORKERS": 1,  # set by gunicorn.conf.py; torch threads per worker = cores / workers
    "TORCH_THREADS": 0,  # 0: derive from cores and WORKERS
    "ATTRIBUTES_FILE": None,  # None: the bundled faceapp/attributes.yaml
    # The inference thread (faceapp/engine.py): images per forward pass, and how long a request
    # waits for its turn before answering 503 model.busy.
    "INFERENCE_MAX_BATCH": 8,
    "INFERENCE_TIMEOUT": 60.0,
    # Seconds a batch may wait for the items its last batches' demand says are coming (clients
    # that send again once answered); at most a tenth of a batch's compute time; 0: never wait.
    "INFERENCE_BATCH_WAIT": 0.02,
    # Inference threads per process, over one queue, with the torch threads shared among them
    # (faceapp/engine.py). None: 1, and the cores in `flask batch`, where batches never run out.
    "INFERENCE_THREADS": None,
    # Faces and labels one client (API key, or address without keys) may have waiting for the
    # inference thread of a worker; more is 429 rate.limited (0: no limit). The queue serves
    # clients in turn either way (faceapp/engine.py).
    "INFERENCE_MAX_WAITING_PER_CLIENT": 64,
    # The store
    "STORE_URL": None,  # None: <instance>/store
    "STORE_MAX_BYTES": 2 * 1024**3,
    "STORE_MAX_AGE_SECONDS": 7 * 24 * 3600,
    # The events kept in one image's trace: the oldest go first (both store backends).
    "TRACE_MAX_EVENTS": 1000,
    # Jobs (faceapp/jobs/): Celery workers fed through Redis. BROKER_URL None: the STORE_URL's
    # Redis (jobs are unavailable with the folder store and no BROKER_URL).
    "BROKER_URL": None,
    "JOBS_VISIBILITY_TIMEOUT": 600,  # s: work a lost worker held goes to another after this
    "JOBS_CHUNK_SIZE": 8,  # items per task (one worker's batch)
    "JOBS_WINDOW": 8,  # chunks of one key's jobs queued or running at once (its parallelism)
    "JOBS_MAX_ATTEMPTS": 5,  # tries of a chunk whose items meet lasting trouble, then it fails
    # How far `flask worker` lowers its CPU priority (nice, 0-19; 0: as started), so a host's
    # interactive requests get the cores before a job's chunks (faceapp/jobs/worker.py).
    "JOBS_WORKER_NICE": 10,
    "JOB_TTL": 7 * 24 * 3600,  # s a finished job and its results are kept
    "MAX_JOB_ITEMS": 10_000,
    "MAX_ACTIVE_JOBS": 3,  # queued or running jobs per API key
    "MAX_ARCHIVE_BYTES": 200 * 1024 * 1024,  # a job's zip, compressed and expanded
    # Inputs
    "MAX_UPLOAD_BYTES": 10 * 1024 * 1024,
    "MAX_IMAGE_PIXELS": 40_000_000,
    "MAX_IMAGE_FRAMES": 1000,
    # What decoding may hold in memory (faceapp/decoding.py): one image at most MAX_DECODE_MEMORY
    # bytes (its estimate; more is 413 image.too_many_pixels), and all of a worker's decodes at
    # once DECODE_MEMORY_BUDGET bytes (a decode waits its turn up to DECODE_WAIT_SECONDS, then
    # 503 image.busy). A 40 MP RGB PNG needs about 250 MB, a 12 MP JPEG photo about 12 MB.
    "MAX_DECODE_MEMORY": 320 * 1024**2,
    "DECODE_MEMORY_BUDGET": 512 * 1024**2,
    "DECODE_WAIT_SECONDS": 30.0,
    # The stored, normalised image is at most this wide and tall. 2000, not 2048: a 4000 px JPEG
    # then decodes at half scale (JPEG's draft mode never goes below the size asked for).
    "STORED_MAX_SIDE": 2000,
    # None: as many parts as the largest form the multipart schemas accept (schemas.py).
    "MAX_FORM_PARTS": None,
    "MAX_FORM_MEMORY_SIZE": None,  # None: room for an image_base64 form field of MAX_UPLOAD_BYTES
    # image_url
    "URL_ALLOWED_HOSTS": "",
    "URL_ALLOW_PRIVATE_NETWORKS": False,
    "URL_CONNECT_TIMEOUT": 3.0,
    "URL_READ_TIMEOUT": 5.0,
    "URL_DEADLINE": 15.0,
    "URL_MAX_REDIRECTS": 3,
    # Faces and validation
    # yunet (OpenCV Zoo's YuNet, pulled into MODELS_DIR), or haar (OpenCV's cascade, no file).
    # When YuNet cannot be had the service runs on Haar and says so (faceapp/faces.py).
    "DETECTOR": "yunet",
    "DETECTOR_MODEL": None,  # a YuNet ONNX file; None: the one `models pull` put in MODELS_DIR
    # What runs YuNet: onnxruntime (2.6x faster), opencv (cv2.FaceDetectorYN), or auto: ONNX
    # Runtime where it imports, else OpenCV (faceapp/yunet_onnx.py). The same faces either way.
    "DETECTOR_RUNTIME": "auto",
    "DETECTOR_AUTO_PULL": None,  # None: as MODEL_AUTO_PULL
    "DETECTOR_URL": None,  # None: OpenCV's published file (faceapp/model_files.py YUNET)
    "DETECTOR_SHA256": None,  # the SHA-256 DETECTOR_URL's file must have; None: the pinned one
    # Seconds a detector pull may take in all (connect, headers, body); a worker pulls in the
    # background, never while a request waits (faceapp/faces.py).
    "DETECTOR_PULL_DEADLINE": 120.0,
    "YUNET_SCORE_THRESHOLD": None,  # None: 0.75, calibrated on real photos (docs/DETECTOR.md)
    "HAAR_MIN_CONFIDENCE": None,  # None: 0.85, calibrated on real photos
    "DETECT_MAX_SIDE": 640,
    # Another face counts toward face.multiple only when its side is at least this fraction of
    # the main (largest) face's and it is not cut by the image border; else face.background.
    "COMPARABLE_FACE_RATIO": 0.5,
    "OUT_OF_FOCUS_RATIO": 0.1,  # a blurry face under this share of the sharpest is background
    "MAX_FACES": 5,  # faces analysed per image (largest first) unless a request says max_faces
    # The most a request's max_faces may ask for: each face is a CLIP forward's worth of work
    # (100 faces took 12.7 s where 5 took 0.7 s), so this bounds what one request costs.
    "MAX_FACES_LIMIT": 20,
    "REQUIRE_SINGLE_FACE": True,
    "MIN_FACE_PX": 48,
    "MIN_IMAGE_PX": 64,
    # Sharpness of the face (faceapp/validation.py): sharp astronaut ~1170, its face at 42 px ~330,
    # strongly blurred ~20..33. 100 sits between them with a 3x margin either way.
    "BLUR_THRESHOLD": 100.0,
    "DARK_THRESHOLD": 40.0,
    "BRIGHT_THRESHOLD": 220.0,
    # Access
    "API_KEYS": "",
    "ADMIN_KEYS": "",
    "TESTER_ENABLED": None,  # None: on in development, off otherwise
    # Signs the tester pages' session cookie and CSRF tokens. Set FACEAPP_SECRET_KEY (the same
    # value on every instance behind one load balancer). None: a random key kept in
    # <instance>/secret_key, made on first use and shared by every worker of this instance (a key
    # made per process would fail the CSRF tokens another gunicorn worker handed out).
    "SECRET_KEY": None,
    "SESSION_COOKIE_SAMESITE": "Lax",  # the tester's session cookie never rides cross-site posts
    # A tester sign-in is held in the store this long at most (sign-out ends it at once).
    "SESSION_MAX_AGE_SECONDS": 12 * 3600,
    # How many reverse proxies in front of faceapp append to X-Forwarded-For/-Proto (1 behind
    # one nginx); 0 trusts no such header: the client is the socket peer (faceapp/security.py).
    "TRUSTED_PROXY_HOPS": 0,
    # Requests over all of /api and the tester pages (not the health and ready probes): per API
    # key when API_KEYS is set (requests without a valid key: per client address), else per
    # client address. A frontend host sending tens of requests a second fits well inside;
    # the limit stops runaway clients and key guessing, not capacity (faceapp/security.py).
    "RATELIMIT": "100 per second; 3000 per minute",
    "RATELIMIT_ENABLED": True,
    # Failed key checks (a 401 to a request that carried a key, on /api, the pages, their
    # sign-in form and /metrics) per client address: past it, that address's requests with a
    # key are 429 until the window ends, right key or not (faceapp/security.py).
    "AUTH_FAILURE_LIMIT": "10 per minute",
    # Where the counts live: None = the STORE_URL's Redis when STORE_URL is redis://, else the
    # worker's memory (each worker then counts on its own); or any limits storage URI.
    "RATELIMIT_STORAGE_URI": None,
    # GET /metrics (faceapp/metrics.py): off unless enabled; an admin key when ADMIN_KEYS is set,
    # unless METRICS_PUBLIC (then keep it internal at the proxy, deploy/nginx-faceapp.conf).
    "METRICS_ENABLED": False,
    "METRICS_PUBLIC": False,
    # faceapp's own log level, and gunicorn's (gunicorn.conf.py reads the same FACEAPP_LOG_LEVEL).
    "LOG_LEVEL": "INFO",
    # gunicorn's worker class (faceapp/gunicorn_worker.py): seconds from a request's first byte to
    # its last header, for each read of the body, and for the whole body; and the bytes a second
    # a body must average once BODY_RATE_GRACE seconds have passed (0: no minimum).
    "HEADER_TIMEOUT": 5.0,
    "BODY_READ_TIMEOUT": 30.0,
    "BODY_TIMEOUT": 120.0,
    "BODY_MIN_RATE": 1024.0,
    "BODY_RATE_GRACE": 5.0,
}

# The type of each setting whose default is None (None stays allowed: it means "derive it").
NULLABLE: dict[str, type] = {
    "MODELS_DIR": str,
    "ATTRIBUTES_FILE": str,
    "STORE_URL": str,
    "MAX_FORM_MEMORY_SIZE": int,
    "MAX_FORM_PARTS": int,
    "DETECTOR_MODEL": str,
    "DETECTOR_AUTO_PULL": bool,
    "DETECTOR_URL": str,
    "DETECTOR_SHA256": str,
    "YUNET_SCORE_THRESHOLD": float,
    "HAAR_MIN_CONFIDENCE": float,
    "INFERENCE_THREADS": int,
    "TESTER_ENABLED": bool,
    "SECRET_KEY": str,
    "RATELIMIT_STORAGE_URI": str,
    "BROKER_URL": str,
    "MAX_CONTENT_LENGTH": int,  # Flask's own; derived from MAX_UPLOAD_BYTES when unset
}
# Settings that must be above 0: a zero here would refuse every image or wait, or divide by it.
POSITIVE = frozenset(
    {
        "INFERENCE_MAX_BATCH",
        "INFERENCE_TIMEOUT",
        "INFERENCE_THREADS",
        "MAX_UPLOAD_BYTES",
        "MAX_IMAGE_PIXELS",
        "MAX_IMAGE_FRAMES",
        "MAX_DECODE_MEMORY",
        "DECODE_MEMORY_BUDGET",
        "STORED_MAX_SIDE",
        "MAX_FORM_PARTS",
        "TRACE_MAX_EVENTS",
        "URL_CONNECT_TIMEOUT",
        "URL_READ_TIMEOUT",
        "URL_DEADLINE",
        "DETECTOR_PULL_DEADLINE",
        "DETECT_MAX_SIDE",
        "MAX_FACES",
        "MAX_FACES_LIMIT",
        "SESSION_MAX_AGE_SECONDS",
        "HEADER_TIMEOUT",
        "BODY_READ_TIMEOUT",
        "BODY_TIMEOUT",
        "JOBS_VISIBILITY_TIMEOUT",
        "JOBS_CHUNK_SIZE",
        "JOBS_WINDOW",
        "JOBS_MAX_ATTEMPTS",
        "JOB_TTL",
        "MAX_JOB_ITEMS",
        "MAX_ACTIVE_JOBS",
        "MAX_ARCHIVE_BYTES",
    }
)
# Comma-separated in the environment; a list (or the same string) in instance/config.py.
LISTS = frozenset({"API_KEYS", "ADMIN_KEYS", "URL_ALLOWED_HOSTS"})
# Settings that name one of a few things: any case, stored lowercase; empty means the default.
# The only place they are checked: the code that reads them trusts the value.
CHOICES: dict[str, tuple[str, ...]] = {
    "DETECTOR": ("yunet", "haar"),
    "DETECTOR_RUNTIME": ("auto", "onnxruntime", "opencv"),
}


def load_config(app: Flask, test_config: dict[str, Any] | None) -> None:
    """Fill ``app.config`` from the defaults, the instance file and the environment (or tests)."""
    types = setting_types(app)
    app.config.from_mapping(DEFAULTS)
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
        for key in types:
            if key in app.config:
                app.config[key] = convert(key, app.config[key], types[key])
        # Flask's and extensions' other keys (RATELIMIT_HEADERS_ENABLED...) as Flask reads them;
        # then every typed key again from its raw text, which JSON would have guessed at.
        app.config.from_prefixed_env(ENV_PREFIX.rstrip("_"))
        for key, kind in types.items():
            raw = os.environ.get(ENV_PREFIX + key)
            if raw is not None:
                app.config[key] = convert(ENV_PREFIX + key, raw, kind)
    else:
        app.config.from_mapping(test_config)
        for key in test_config:
            if key in types:
                app.config[key] = convert(key, app.config[key], types[key])

    cfg = app.config
    level = str(cfg["LOG_LEVEL"]).strip().upper()
    if level not in LOG_LEVELS:
        name = "LOG_LEVEL" if test_config else ENV_PREFIX + "LOG_LEVEL"
        raise SettingError(f"{name}: {cfg['LOG_LEVEL']!r} is not one of {', '.join(LOG_LEVELS)}")
    cfg["LOG_LEVEL"] = level
    cfg["MODELS_DIR"] = cfg["MODELS_DIR"] or os.path.join(app.instance_path, "models")
    cfg["STORE_URL"] = cfg["STORE_URL"] or os.path.join(app.instance_path, "store")
    if under_gunicorn():
        cfg["DEBUG"] = False  # the Werkzeug debugger and tracebacks never face real traffic
    if cfg["TESTER_ENABLED"] is None:
        cfg["TESTER_ENABLED"] = app.debug or bool(cfg.get("TESTING"))
    # Flask enforces the request body limit before any view runs; leave room for base64 (4/3) and
    # form overhead. Flask's own defaults are in app.config already (MAX_CONTENT_LENGTH: None, no
    # limit at all), so "unset" means None here, not absent.
    base64_bytes = int(cfg["MAX_UPLOAD_BYTES"] * 4 / 3)
    if cfg.get("MAX_CONTENT_LENGTH") is None:
        cfg["MAX_CONTENT_LENGTH"] = base64_bytes + 64 * 1024
    if cfg.get("MAX_FORM_MEMORY_SIZE") is None:
        # Werkzeug's multipart decoder also holds up to this much of a file part while parsing,
        # so it never goes below the old 512 KiB even when MAX_UPLOAD_BYTES is small.
        cfg["MAX_FORM_MEMORY_SIZE"] = max(base64_bytes + 1024, 512 * 1024)


def setting_types(app: Flask) -> dict[str, Any]:
    """Each known setting's type: faceapp's from DEFAULTS and NULLABLE, Flask's from its defaults.

    A type is bool, int, float, str, or list (comma-separated text). Flask's own settings count
    too where their default says what they are (``SESSION_COOKIE_SECURE=False`` is false).
    """
    types: dict[str, Any] = {
        key: type(value)
        for key, value in app.config.items()
        if isinstance(value, (bool, int, float, str))
    }
    for key, default in DEFAULTS.items():
        types[key] = list if key in LISTS else type(default)
    types.update(NULLABLE)
    return types


def check_settings(instance_dir: str) -> None:
    """Read the settings as a worker will, raising :class:`SettingError` for the first bad one.

    gunicorn's master calls this before it forks (gunicorn.conf.py), so a bad value is one
    ``Error:`` line and exit 1, not a traceback from every worker that fails to boot.
    """
    load_config(Flask("faceapp", instance_path=instance_dir, instance_relative_config=True), None)


def yes_no(value: Any) -> bool:
    """The one yes/no parser: a bool, 1/0, true/false, yes/no, on/off (any case; "" is no).

    Raises ValueError for anything else (callers turn it into their own clear error).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"{value!r} is not a yes/no value (true/false, yes/no, on/off, 1/0)")


def convert(name: str, value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` (bool, int, float, str or list); SettingError names ``name``."""
    key = name.removeprefix(ENV_PREFIX)
    if isinstance(value, str) and key in NULLABLE and not value.strip():
        return None  # FACEAPP_TESTER_ENABLED= (empty): unset, as if it were not there
    if value is None:
        if key in NULLABLE:
            return None
        raise SettingError(f"{name}: needs a value (its default is {DEFAULTS.get(key)!r})")
    try:
        if kind is bool:
            return yes_no(value)
        if kind is list:
            return split_list(value)
        if kind is str:
            return _choice(key, _text(value)) if key in CHOICES else _text(value)
        if kind is int:
            return _in_range(key, _whole_number(value))
        if kind is float:
            return _in_range(key, _finite_number(value))
    except ValueError as exc:
        raise SettingError(f"{name}: {exc}") from None
    return value


def _text(value: Any) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _choice(key: str, text: str) -> str:
    word = text.strip().lower() or DEFAULTS[key]
    if word not in CHOICES[key]:
        raise ValueError(f"{text!r} is not one of {', '.join(CHOICES[key])}")
    return word


def _whole_number(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a whole number")


def _finite_number(value: Any) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise ValueError(f"{value!r} is not a number")
    return number


def _in_range(key: str, number: Any) -> Any:
    if key in POSITIVE and number <= 0:
        raise ValueError(f"{number!r} must be above 0")
    if number < 0:
        raise ValueError(f"{number!r} is below 0")
    return number


def under_gunicorn() -> bool:
    """True in a gunicorn worker (its arbiter sets SERVER_SOFTWARE=gunicorn/<version>)."""
    return os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn")


def instance_path(project_root: str) -> str:
    """The instance folder: ``FACEAPP_INSTANCE_PATH``, else ``instance/`` in the project root."""
    return os.environ.get("FACEAPP_INSTANCE_PATH") or os.path.join(project_root, "instance")


def instance_secret_key(instance_dir: str) -> str:
    """The instance's own secret key from ``<instance>/secret_key``, made (mode 0600) if missing.

    Every worker and instance sharing the folder reads the same key. A new key is written under a
    temporary name and hard-linked into place, so racing first users all end up with the winner's.
    """
    path = os.path.join(instance_dir, "secret_key")
    if not os.path.exists(path):
        os.makedirs(instance_dir, exist_ok=True)
        create_once(path, secrets.token_hex(32).encode("ascii"))  # mode 0600
    with open(path, encoding="ascii") as fh:
        key = fh.read().strip()
    if len(key) < 32:
        raise RuntimeError(f"{path} holds no usable secret key; delete it to have a new one made")
    return key


def split_list(value: Any) -> list[str]:
    """Accept a comma-separated string or a list, and return the non-empty stripped items."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]

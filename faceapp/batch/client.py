"""``flask batch --server URL``: the same lines, from a running faceapp deployment over HTTP.

Each input is one POST /api/validate (a path is uploaded as ``file``, a URL is sent as
``image_url`` and fetched by the server under its rules), then, when the photo is valid or
``force`` is on, one POST /api/analyze by the image_id validate stored (nothing is sent twice).
The line is built from the two answers exactly as the local pipeline builds it.

A 429 is retried after its ``Retry-After`` (up to ``MAX_RATE_LIMITED`` times); a 503
(model.not_ready, model.busy, store.unavailable) and a connection failure are retried with
exponential backoff (up to ``MAX_TRIES`` tries). An input whose 429s or 503s outlast the bound
gets that answer's error line; a
deployment that stops answering at all stops the run (:class:`~faceapp.batch.runner.Stop`),
so that the next run resumes where it broke off.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import requests

from faceapp import analysis
from faceapp.batch.pipeline import Options, read_source, source_kind
from faceapp.batch.runner import Stop
from faceapp.errors import FaceappError
from faceapp.store import image_id_for
from faceapp.version import __version__

MAX_TRIES = 6  # per request, after 503s or failed connections: the first try and its retries
MAX_RATE_LIMITED = 60  # per request, 429s waited out (each for its Retry-After) before giving up
BACKOFF_S = 0.5  # the first wait after a 503 or a failed connection; doubled each time
MAX_WAIT_S = 30.0  # no single wait is longer (a larger Retry-After included)
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # a busy deployment's model may queue a request for INFERENCE_TIMEOUT


class ServerError(Exception):
    """The deployment cannot be used at all (wrong URL, refused key): the command's error."""


class Client:
    """One deployment, shared by the run's threads (a requests session per thread)."""

    def __init__(
        self, base_url: str, options: Options, *, api_key: str | None, config: Any
    ) -> None:
        self.base = base_url.rstrip("/")
        self.options = options
        self.config = config  # the local app's: MAX_UPLOAD_BYTES for reading files to upload
        self.headers = {"User-Agent": f"faceapp-batch/{__version__}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._local = threading.local()
        self.retries = 0  # requests sent again after a 429, a 503 or a connection failure
        self.model_info: dict = {}
        self.attribute_names: list[str] = []
        # The deployment's MAX_FACES (its /api/ready's limits), for the face_count of a line
        # not analysed; None until a ready answer told it.
        self.server_max_faces: int | None = None
        self._ready_read = False  # a ready answer (not an error) was read
        self._ready_lock = threading.Lock()

    # -- the start: is the deployment there, and what does it score ---------------------------
    def connect(self) -> None:
        """Read the deployment's attribute set and model (ServerError if it cannot be used)."""
        try:
            attributes = self._request("GET", "/api/attributes")
            ready = self._request("GET", "/api/ready")
        except Stop as exc:
            raise ServerError(str(exc)) from None
        if "error" in attributes:
            raise ServerError(f"{self.base}: {attributes['error']['message']}")
        names = [item["name"] for item in attributes.get("attributes", [])]
        unknown = [name for name in self.options.attributes if name not in names]
        if unknown:
            raise ServerError(
                f"the deployment has no attribute {unknown[0]!r}; it has {', '.join(names)}"
            )
        self.attribute_names = list(self.options.attributes) or names
        self.model_info = ready.get("model") or {}
        self._read_limits(ready)

    def _read_limits(self, ready: dict) -> None:
        if "error" in ready:
            return  # not ready yet: asked again when a line needs it (:meth:`max_faces`)
        # A deployment older than the limits in /api/ready: its max_faces cannot be known.
        self.server_max_faces = (ready.get("limits") or {}).get("max_faces")
        self._ready_read = True

    def max_faces(self) -> int | None:
        """The max_faces in force on the deployment: ``--max-faces``, else its MAX_FACES (None
        when the deployment does not say it)."""
        if self.options.max_faces:
            return self.options.max_faces
        with self._ready_lock:
            if not self._ready_read:
                self._read_limits(self._request("GET", "/api/ready"))
        return self.server_max_faces

    # -- one input ----------------------------------------------------------------------------
    def process(self, source: str) -> dict:
        """The line of one input, from the deployment's answers (raises Stop when it is gone)."""
        kind = source_kind(source)
        fields: dict[str, Any] = {}
        files = None
        image_id = None  # a file's is known here (SHA-256 of its bytes); a URL's only remotely
        try:
            if kind == "image_url":
                fields["image_url"] = source
            else:
                data = read_source(source, kind, self.config)
                image_id = image_id_for(data)
                files = {"file": (os.path.basename(source) or "image", data)}
        except FaceappError as exc:
            return {"source": source, "image_id": None, **exc.to_dict()}
        # details: the faces found, for the face_count of a line whose faces are not analysed.
        validated = self._request("POST", "/api/validate?details=1", data=fields, files=files)
        if "error" in validated:
            return {"source": source, "image_id": image_id, **_error(validated)}
        line = {
            "source": source,
            "image_id": validated["image_id"],
            "valid": validated["valid"],
            "errors": validated["errors"],
            "warnings": validated["warnings"],
            "faces": [],
            "face_count": self._not_analysed(validated.get("details", {"faces": []})),
            "model": self.model_info,
        }
        if validated["valid"] or self.options.force:
            analyzed = self._request(
                "POST", "/api/analyze", json=self._analyze_body(validated["image_id"])
            )
            if "error" in analyzed:
                return {"source": source, "image_id": validated["image_id"], **_error(analyzed)}
            line["faces"] = analyzed["faces"]
            line["face_count"] = analyzed["face_count"]
            line["model"] = analyzed["model"]
        return line

    def _not_analysed(self, details: dict) -> dict:
        """face_count of a photo not analysed: every face found left out, and the deployment's
        max_faces (null when it does not say it)."""
        counts = analysis.face_count(details, 0, analysed=False)  # the 0 is not used
        return {**counts, "max_faces": self.max_faces()}

    def _analyze_body(self, image_id: str) -> dict[str, Any]:
        """POST /api/analyze's JSON body: the image_id and the options the API was given."""
        document = {key: value for key, value in self.options.to_dict().items() if value}
        return {"image_id": image_id, **document}

    # -- HTTP with bounded retries --------------------------------------------------------------
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # no proxy from the environment between us and it
            session.headers.update(self.headers)
        return session

    def _request(self, method: str, path: str, **kwargs: Any) -> dict:
        """The JSON answer (an error envelope included) after the bounded retries."""
        wait, failures, rate_limited = BACKOFF_S, 0, 0
        while True:
            try:
                response = self._session().request(
                    method,
                    self.base + path,
                    timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                    **kwargs,
                )
            except requests.RequestException as exc:
                failures += 1
                if failures >= MAX_TRIES:
                    raise Stop(f"{self.base} does not answer ({type(exc).__name__})") from None
                self._pause(wait)
                wait *= 2
                continue
            if response.status_code == 429 and rate_limited + 1 < MAX_RATE_LIMITED:
                rate_limited += 1
                self._pause(_retry_after(response, wait))
                continue
            if response.status_code == 503 and failures + 1 < MAX_TRIES:
                failures += 1
                self._pause(wait)
                wait *= 2
                continue
            return _json(response)

    def _pause(self, seconds: float) -> None:
        self.retries += 1
        time.sleep(min(MAX_WAIT_S, seconds))


def _retry_after(response: requests.Response, default: float) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return default


def _json(response: requests.Response) -> dict:
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        return document
    code = "internal" if response.status_code >= 500 else "input.invalid"
    return {"error": {"code": code, "message": f"HTTP {response.status_code} without an answer"}}


def _error(answer: dict) -> dict:
    error = answer["error"]
    return {"error": {key: error[key] for key in ("code", "message", "field") if key in error}}

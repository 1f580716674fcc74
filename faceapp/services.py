"""The service functions behind both the JSON API and the tester pages.

A request's path: inputs (bytes) -> decoding -> store -> face detection -> validation; analysis
lives in faceapp/analysis.py. Views parse, call one function here, and render what it returns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app, g

from faceapp import (
    access,
    analysis,
    decoding,
    faces,
    metrics,
    request_log,
    stored_image,
    validation,
)
from faceapp.errors import FaceappError
from faceapp.inputs import ImageSource, source_bytes, source_name
from faceapp.store import check_image_id, image_id_for, not_found, store

log = logging.getLogger(__name__)


def now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_event(
    image_id: str, event: str, timings_ms: Mapping[str, float] | None = None, **extra: Any
) -> dict:
    """Append one event to an image's trace (who, when, which request, how long)."""
    caller = g.get("caller")  # faceapp.access: who sent the request, as a key id (never a key)
    entry = {
        "event": event,
        "time": now_iso(),
        "worker_pid": os.getpid(),
        "request_id": g.get("request_id", "-"),
        "timings_ms": {k: round(float(v), 2) for k, v in (timings_ms or {}).items()},
        **({"key_id": caller.key_id} if caller is not None and caller.key_id else {}),
        **extra,
    }
    store.backend.append_event(image_id, entry)
    if event == "validated" and "key_id" in entry:
        # A key sees the images it sent (visible_meta): kept apart from the trace, which is
        # capped at TRACE_MAX_EVENTS and may drop this event under other keys' events.
        store.backend.add_owner(image_id, entry["key_id"])
    metrics.observe_event(event, entry["timings_ms"], extra)
    return entry


def _decode(data: bytes, source_kind: str, config: Mapping[str, Any]) -> decoding.DecodedImage:
    try:
        return decoding.decode_with_limits(data, config, decoding.budget_for(current_app))
    except FaceappError as exc:
        # For a URL, "not an image we decode" is the remote's fault: 422 url.not_image.
        if source_kind == "image_url" and exc.code in (
            "image.unsupported_format",
            "image.corrupt",
            "image.empty",
        ):
            raise FaceappError(
                "url.not_image",
                f"The URL did not serve an image faceapp can read: {exc.message}",
                field="image_url",
            ) from None
        raise


def validation_answer(meta: Mapping[str, Any], details: bool = False) -> dict:
    """API.md's validate answer (exactly image_id, valid, errors, warnings; + details if asked)."""
    result = meta["validation"]
    answer = {
        "image_id": meta["image_id"],
        "valid": not result["errors"],
        "errors": result["errors"],
        "warnings": result["warnings"],
    }
    if details:
        answer["details"] = {
            "width": meta["width"],
            "height": meta["height"],
            "format": meta["format"],
            "faces": meta["faces"],
            "detector": _public_detector(meta.get("detector")),
            "quality": result.get("quality", {}),
        }
    return answer


def ingest(source: ImageSource, *, wipe_cache: bool = False) -> dict:
    """Store and validate an image source; returns its stored metadata (validation included).

    The same bytes always give the same image_id; a stored image is validated once and reused,
    unless `wipe_cache` asks for its cached validation and results to be dropped and redone, or
    it was validated by another detector or under other rules (:func:`stale_reason`).
    """
    config = current_app.config
    started = time.perf_counter()
    request_log.count_as_work()
    data = source_bytes(source, config)
    image_id = image_id_for(data)
    g.image_id = image_id
    timings = {"receive": (time.perf_counter() - started) * 1000}

    meta = store.current_meta(image_id)
    if meta is not None and stale_reason(meta, config) is None and not wipe_cache:
        timings["total"] = (time.perf_counter() - started) * 1000
        record_event(
            image_id,
            "validated",
            timings,
            cached=True,
            valid=meta["validation"]["valid"],
            source=source.kind,
            name=source_name(source),
        )
        return meta
    return validate_afresh(
        image_id, data, meta, source.kind, source_name(source), timings=timings, started=started
    )


def stale_reason(meta: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Why a stored validation no longer holds (``detector_changed``: made by another detector
    version; ``rules_changed``: judged by other rules, see :func:`validation.rules_version`),
    or None when it still does."""
    if not faces.same_detector(meta, faces.describe()):
        return "detector_changed"
    if meta.get("validation", {}).get("rules") != validation.rules_version(config):
        return "rules_changed"
    return None


def validate_afresh(
    image_id: str,
    data: bytes,
    meta: dict | None,
    source_kind: str,
    name: str | None,
    *,
    timings: dict[str, float],
    started: float,
) -> dict:
    """Examine and store an image's bytes, and trace it; `meta` is what the store held."""
    config = current_app.config
    backend = store.backend
    detector = faces.describe()
    history: list[dict] = []
    owners: set[str] = set()
    stale = None if meta is None else stale_reason(meta, config)
    if stale is not None:
        # Another detector finds other faces, other rules give other roles: the stored face
        # contexts and results must go too. The image is stored afresh below, and its trace
        # and owners carried over (wipe_cache or not).
        history, owners = backend.events(image_id), backend.owners(image_id)
        backend.delete(image_id)
    elif meta is not None:  # wipe_cache: validated afresh, trace stays
        wipe_results(image_id)

    examined = examine(data, image_id, source_kind, config)
    meta, parts = examined.meta, examined.parts
    timings.update(examined.timings)
    step = time.perf_counter()
    if not backend.put_image(image_id, data, meta, parts):
        # Stored already (wipe_cache, or a concurrent request): the same bytes give the same
        # parts, so only the metadata is renewed.
        backend.set_meta(image_id, meta)
    if history:
        for event in history:
            backend.append_event(image_id, event)
        record_event(image_id, "wiped", {}, reason=stale)
    for owner in owners:
        backend.add_owner(image_id, owner)
    timings["store"] = timings.pop("parts") + (time.perf_counter() - step) * 1000
    timings["total"] = (time.perf_counter() - started) * 1000
    record_event(
        image_id,
        "validated",
        timings,
        cached=False,
        valid=meta["validation"]["valid"],
        source=source_kind,
        name=name,
        errors=[issue["code"] for issue in meta["validation"]["errors"]],
        warnings=[issue["code"] for issue in meta["validation"]["warnings"]],
        **faces.trace_fields(detector),
    )
    log.info(
        "validated %s: valid=%s faces=%d",
        image_id[:12],
        meta["validation"]["valid"],
        len(meta["faces"]),
    )
    return meta


def revalidate_stored(image_id: str, meta: dict) -> dict:
    """A stored image validated by another detector or other rules, validated again from its
    stored bytes (analyze by image_id must not judge it by the old validation)."""
    data = store.backend.get_image(image_id)
    if data is None:  # deleted or evicted since its metadata was read
        raise not_found(image_id)
    started = time.perf_counter()
    return validate_afresh(
        image_id, data, meta, meta.get("source", "image_id"), None, timings={}, started=started
    )


def revalidate_if_stale(image_id: str) -> dict:
    """The tester's Validate again: a stored image this caller sees, judged again from its
    stored bytes when its validation was made under other settings; its metadata either way."""
    meta = visible_meta(image_id)
    if stale_reason(meta, current_app.config) is None:
        return meta  # current already (another request re-validated it): nothing to redo
    return revalidate_stored(image_id, meta)


@dataclass
class Examined:
    """An image's bytes examined: its metadata (validation included), the parts validate stores
    beside the bytes (face contexts, preview), and how long each step took (ms)."""

    meta: dict
    parts: dict[str, bytes]
    timings: dict[str, float]


def examine(
    data: bytes,
    image_id: str,
    source_kind: str,
    config: Mapping[str, Any],
    *,
    contexts: int | None = None,
    preview: bool = True,
) -> Examined:
    """Validate's work on an image's bytes, without the store: decode under the limits, detect
    the faces, check the quality, and cut the face contexts that analyze crops from.

    The service stores what this returns; ``flask batch`` (faceapp/batch) keeps it in memory and
    asks only for the parts it will crop from: the first `contexts` faces' (None: every face's),
    and the preview when `preview`. Raises FaceappError (image.*, url.not_image) for bytes that
    do not decode. Needs an app context (the app's detector).
    """
    timings: dict[str, float] = {}
    step = time.perf_counter()
    decoded = _decode(data, source_kind, config)
    timings["decode"] = (time.perf_counter() - step) * 1000
    step = time.perf_counter()
    # The preview (a whole-factor reduction, stored for the tester) is made first: detection's
    # copy and the brightness measure start from it rather than from the full image.
    reduced = stored_image.make_preview(decoded.image)
    found = faces.detect(decoded.image, reduced)
    timings["detect"] = (time.perf_counter() - step) * 1000
    step = time.perf_counter()
    thresholds = validation.Thresholds.from_config(config)
    report = validation.assess(decoded.image, found, thresholds, reduced=reduced)
    found = validation.main_first(found, report)
    timings["validate"] = (time.perf_counter() - step) * 1000
    step = time.perf_counter()
    face_dicts = [face.to_dict() for face in found]
    parts, stored = stored_image.build_parts(
        decoded.image,
        face_dicts[:contexts] if contexts is not None else face_dicts,
        reduced,
        with_preview=preview,
    )
    meta = {
        "image_id": image_id,
        "created": time.time(),
        "created_at": now_iso(),
        "bytes": len(data),
        "source": source_kind,
        "format": decoded.format,
        "width": decoded.width,
        "height": decoded.height,
        "source_width": decoded.source_width,
        "source_height": decoded.source_height,
        "frames": decoded.frames,
        "detector": faces.describe(),
        "faces": validation.describe_faces(found, report),
        "validation": {
            "valid": report.valid,
            "errors": [issue.to_dict() for issue in report.errors],
            "warnings": [issue.to_dict() for issue in report.warnings],
            "quality": report.quality,
            "rules": validation.rules_version(config),
        },
        "stored": stored,
    }
    timings["parts"] = (time.perf_counter() - step) * 1000
    return Examined(_plain(meta), parts, timings)


def validate(source: ImageSource, *, wipe_cache: bool = False, details: bool = False) -> dict:
    """POST /api/validate: store, validate and answer API.md's minimal schema."""
    meta = ingest(source, wipe_cache=wipe_cache)
    return validation_answer(meta, details=details)


def analyze(
    source: ImageSource | None,
    image_id: str | None,
    *,
    attributes: list[str] | None = None,
    labels: list[str] | None = None,
    include_embedding: bool = False,
    wipe_cache: bool = False,
    force: bool = False,
    max_faces: int | None = None,
    trace_extra: Mapping[str, Any] | None = None,
) -> dict:
    """POST /api/analyze: score the faces of a stored (or just sent) image, cached per options.

    `trace_extra` adds fields to this request's trace event (the tester names its run there).
    """
    started = time.perf_counter()
    request_log.count_as_work()
    names = analysis.check_attribute_names(attributes)
    max_faces = analysis.check_max_faces(max_faces, current_app.config)
    timings: dict[str, float] = {}
    batch: dict[str, Any] = {}  # how the inference thread ran it (the trace shows it)
    wipe = None  # wipe_cache on a stored image: done while the model encodes
    if source is not None:
        meta = ingest(source, wipe_cache=wipe_cache)
        image_id = meta["image_id"]
        timings["validate"] = (time.perf_counter() - started) * 1000
    else:
        meta = visible_meta(image_id)
        if stale_reason(meta, current_app.config) is not None:
            meta = revalidate_stored(image_id, meta)
            timings["validate"] = (time.perf_counter() - started) * 1000
        elif wipe_cache:
            wipe = functools.partial(wipe_results, image_id)
    if not meta["validation"]["valid"] and not force:
        if wipe is not None:
            wipe()
        codes = ", ".join(issue["code"] for issue in meta["validation"]["errors"])
        raise FaceappError(
            "image.not_valid",
            f"The image failed validation ({codes}); send force=true to analyse it anyway.",
            field="image_id",
        )
    step = time.perf_counter()
    cold = analysis.analyzers.peek() is None
    scorer = analysis.analyzer()  # 503 model.not_ready before any work is done
    if cold:  # this request waited for the worker's model to load: a stage of its own
        timings["model_load"] = (time.perf_counter() - step) * 1000
    model_info = describe_model(scorer)
    key = result_key(
        scorer.version,
        names,
        labels,
        include_embedding,
        force,
        detector=model_info["detector"]["version"],
        max_faces=max_faces,
    )
    faces_doc = None if wipe_cache else store.backend.get_result(image_id, key)
    cached = faces_doc is not None
    if not cached:
        step = time.perf_counter()
        regions = analysis.regions_for(meta, force, max_faces)
        crops = stored_image.region_crops(
            meta,
            regions,
            lambda name: store.backend.get_part(image_id, name),
            size=scorer.model.crop_side,
        )
        if crops is None:  # deleted or evicted since its metadata was read
            raise not_found(image_id)
        timings["decode"] = (time.perf_counter() - step) * 1000
        step = time.perf_counter()
        found, stats = scorer.analyze(
            crops,
            regions,
            names,
            labels,
            include_embedding,
            client=access.client_identity(),
            meanwhile=wipe,
        )
        faces_doc = _plain(found)
        if stats is not None:
            timings["queue"] = stats.queue_ms
            timings["forward"] = stats.compute_ms  # its batch's model time (shared when batched)
            batch = {"batch_size": stats.batch_size, "queue_ms": round(stats.queue_ms, 2)}
        timings["encode"] = (time.perf_counter() - step) * 1000
        store.backend.put_result(image_id, key, faces_doc)
    counts = analysis.face_count(meta, max_faces)
    timings["total"] = (time.perf_counter() - started) * 1000
    record_event(
        image_id,
        "cache_hit" if cached else "analyzed",
        timings,
        cached=cached,
        faces=len(faces_doc),
        **({"faces_not_analysed": counts["not_analysed"]} if counts["not_analysed"] else {}),
        model_version=scorer.version,
        attributes=list(attributes or []),  # empty: the whole attribute set
        labels=list(labels or []),
        include_embedding=bool(include_embedding),
        force=bool(force),
        **batch,
        **(trace_extra or {}),
    )
    return {
        "image_id": image_id,
        "model": model_info,
        "faces": faces_doc,
        "face_count": counts,
        "cached": cached,
        "timings_ms": timings,
    }


def describe_model(scorer: analysis.Analyzer) -> dict:
    """The answers' ``model`` object: the CLIP weights and attribute set, and the face detector
    (a Haar fallback standing in for YuNet says so there)."""
    return {**scorer.describe(), "detector": faces.public_describe()}


def result_key(
    model_version: str,
    attribute_names: list[str],
    labels: list[str] | None,
    include_embedding: bool,
    force: bool,
    *,
    detector: str,
    max_faces: int,
) -> str:
    """The cache key of an analysis: SHA-256 of the canonical JSON of everything it depends on.

    JSON escapes every character that could join two labels into one, so no two different
    requests share a key (a label "a\u001fb" is not the labels "a" and "b").
    """
    document = {
        "model": model_version,
        "attributes": list(attribute_names),
        "labels": list(labels or []),
        "embedding": bool(include_embedding),
        "force": bool(force),
        "detector": detector,
        "max_faces": int(max_faces),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


#: The result keys of the tester's runs, beside the analysis cache (faceapp/tester.py): each
#: run's document names the key_id that made it.
TESTER_RUN_PREFIX = "tester-run:"


def wipe_results(image_id: str) -> None:
    """wipe_cache on a stored image. An admin's (or anyone's without API_KEYS) drops every
    cached result and tester run of it; a user key's drops its own tester runs and nothing of
    anyone else's: its request is computed afresh and replaces the cached answer, which is the
    same for everyone."""
    if access.sees_everything():
        store.backend.drop_results(image_id)
    elif (own := access.current_caller().key_id) is not None:
        store.backend.drop_results(
            image_id,
            where=lambda key, document: (
                key.startswith(TESTER_RUN_PREFIX) and document.get("key_id") == own
            ),
        )
    record_event(image_id, "wiped", {}, reason="wipe_cache")


def visible_meta(image_id: str) -> dict:
    """The stored metadata of an image this caller may see, else 404 image_id.not_found.

    With API_KEYS set, a user key sees an image once it has sent it (validate, analyze or the
    tester's upload, of the same bytes); an image only other keys sent answers exactly as one
    never stored, so an image_id tells nobody whether someone else sent that photo. Admin keys,
    and everyone on a service without API_KEYS, see every image.
    """
    meta = store.meta_or_404(image_id)
    g.image_id = image_id
    if not access.sees_everything() and not sent_by_caller(image_id):
        raise not_found(image_id)
    return meta


def sent_by_caller(image_id: str) -> bool:
    """Whether this caller's key sent the image: one of its owners (the store keeps them apart
    from the capped trace), or, for an image stored before owners were kept, in its trace (the
    key is then made an owner, so that a trim of the trace no longer hides the image)."""
    own = access.current_caller().key_id
    if own is None:
        return False
    if own in store.backend.owners(image_id):
        return True
    if not visible_events(store.backend.events(image_id)):
        return False
    store.backend.add_owner(image_id, own)
    return True


def visible_events(events: list[dict]) -> list[dict]:
    """The trace events this caller may see: its own key's (everything to an admin, and to
    everyone without API_KEYS). Another key's events, file names and labels never show."""
    if access.sees_everything():
        return events
    own = access.current_caller().key_id
    return [event for event in events if own is not None and event.get("key_id") == own]


def image_record(image_id: str) -> dict:
    """GET /api/images/<id>: the stored metadata and the validation answer."""
    meta = visible_meta(image_id)
    record = {key: value for key, value in meta.items() if key != "stored"}  # storage's notes
    record["detector"] = _public_detector(meta.get("detector"))
    return record


def _public_detector(info: Any) -> Any:
    """A stored detector description with a fallback's server paths for admins only."""
    return faces.public_describe(info) if isinstance(info, Mapping) else info


def image_trace(image_id: str) -> dict:
    """GET /api/images/<id>/trace: the caller's events of an image, oldest first."""
    visible_meta(image_id)
    return {
        "image_id": image_id,
        "events": visible_events(store.backend.events(image_id)),
        "max_events": current_app.config["TRACE_MAX_EVENTS"],
    }


def image_preview(image_id: str) -> bytes:
    """The stored image's bounded preview (JPEG bytes, upright, at most 1024 px a side)."""
    meta = visible_meta(image_id)
    data = store.backend.get_part(image_id, meta["stored"]["preview"]["part"])
    if data is None:
        raise not_found(image_id)
    return data


def delete_image(image_id: str) -> dict:
    """DELETE /api/images/<id>: forget an image, its results and its trace."""
    check_image_id(image_id)
    if not store.backend.delete(image_id):
        raise not_found(image_id)
    log.info("deleted image %s", image_id[:12])
    return {"image_id": image_id, "deleted": True}


def wipe_all() -> dict:
    """POST /api/cache/wipe: forget every stored image and result."""
    count = store.backend.wipe()
    log.info("wiped the store: %d image(s)", count)
    return {"wiped": count}


# -- the tester's runs and its recent list (faceapp/tester.py) ---------------------------------

TESTER_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,32}$")
RECENT_SCAN = 200  # the newest stored images searched for the caller's uploads


def save_tester_run(image_id: str, run: dict) -> None:
    """Keep a tester run (its options, its key's id and what it computed) beside the image's
    cached results, so that a wipe of them drops it too."""
    store.backend.put_result(image_id, TESTER_RUN_PREFIX + run["run_id"], run)


def tester_run(image_id: str, run_id: str) -> dict | None:
    """A stored tester run of this image that this caller may see (None when unknown,
    malformed, dropped since, or another key's)."""
    if not TESTER_RUN_ID_RE.fullmatch(run_id):
        return None
    run = store.backend.get_result(image_id, TESTER_RUN_PREFIX + run_id)
    if run is None or access.sees_everything():
        return run
    return run if run.get("key_id") == access.current_caller().key_id else None


def tester_run_options(image_id: str, run_id: str) -> dict | None:
    """The options of a tester run, from its trace event (which outlives the run itself)."""
    for event in reversed(image_trace(image_id)["events"]):
        if event.get("tester_run") == run_id:
            return {
                "labels": list(event.get("labels") or []),
                "include_embedding": bool(event.get("include_embedding")),
                "force": bool(event.get("force")),
            }
    return None


def recent_uploads(caller: access.Caller, limit: int) -> list[dict]:
    """The newest uploads this caller may see, newest first, re-uploads counted when they happen.

    With API_KEYS set, a user key sees what it uploaded (through the pages or the API) and an
    admin key sees everything; without keys, everyone sees everything.
    """
    scoped = access.keys_required() and not caller.admin
    if scoped and caller.key_id is None:
        return []
    items = []
    for meta in store.backend.recent(RECENT_SCAN):
        uploads = [
            event
            for event in store.backend.events(meta["image_id"])
            if event.get("event") == "validated"
            and (not scoped or event.get("key_id") == caller.key_id)
        ]
        if scoped and not uploads and caller.key_id not in store.backend.owners(meta["image_id"]):
            continue  # (its uploads may have been trimmed from a capped trace: an owner still)
        latest = uploads[-1] if uploads else {}
        items.append(
            {
                "meta": meta,
                "at": latest.get("time") or meta.get("created_at", ""),
                "name": latest.get("name"),
                "source": latest.get("source") or meta.get("source"),
                "uploads": len(uploads),
            }
        )
    items.sort(key=lambda item: item["at"], reverse=True)
    return items[:limit]


def _plain(value: Any) -> Any:
    from faceapp.output import to_plain

    return to_plain(value)

"""How right is faceapp on a labelled folder: the service's own path, measured per attribute.

A dataset is a folder laid out as ``DIR/<attribute>/<label>/<image>`` (what torchvision's
ImageFolder reads, one level deeper) or a CSV manifest with ``path,attribute,label`` columns
(paths relative to the CSV). Each image goes the way a request goes, without HTTP: decoding
(:func:`faceapp.decoding.decode_image` with the service's limits), the configured face detector
(largest face), the crop analysis uses, the model's ``encode_images`` in batches, and the scoring
of :mod:`faceapp.scoring`. An image is encoded once however many attributes label it and however
many attribute sets are compared on it.

Entries that cannot be scored never stop a run: unknown attributes or labels, unreadable files,
files that are not accepted images are listed in ``skipped`` with the reason; images in which
no face is found are counted in ``no_face``. Rendering (table, JSON, HTML) is in
:mod:`faceapp.eval.report`; the CLI is ``flask --app wsgi eval`` (:mod:`faceapp.eval.cli`).
"""

from __future__ import annotations

import csv
import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from faceapp import decoding, faces, scoring
from faceapp.attributes import AttributeSet
from faceapp.errors import FaceappError
from faceapp.face_geometry import aligned_crop

ECE_BINS = 10  # equal-width confidence bins, as in Guo et al. 2017 ("On calibration ...")
# Margins below which answers are withheld, for the coverage-vs-accuracy table.
ABSTAIN_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TEMPERATURE_RANGE = (0.01, 100.0)  # what the attribute file accepts


class DatasetError(ValueError):
    """The dataset cannot be read at all (not a folder or CSV, or a CSV without its columns)."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: its file, the name shown in reports, the attribute and the label."""

    path: str
    name: str
    attribute: str
    label: str


# -- reading the dataset ---------------------------------------------------------------------
def read_dataset(source: str) -> tuple[list[Sample], list[dict]]:
    """The samples of a labelled folder or CSV manifest, and the entries skipped while reading."""
    if os.path.isdir(source):
        return _read_folder(source)
    if os.path.isfile(source):
        return _read_manifest(source)
    raise DatasetError(f"{source}: neither a folder nor a CSV manifest")


def _read_folder(root: str) -> tuple[list[Sample], list[dict]]:
    samples, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(f for f in filenames if not f.startswith(".")):
            path = os.path.join(dirpath, filename)
            name = os.path.relpath(path, root)
            parts = name.split(os.sep)
            if len(parts) < 3:
                skipped.append(_skip(name, "not in an <attribute>/<label>/ folder"))
                continue
            samples.append(Sample(path, name, parts[0], parts[1]))
    return samples, skipped


def _read_manifest(path: str) -> tuple[list[Sample], list[dict]]:
    base = os.path.dirname(os.path.abspath(path))
    samples, skipped = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "attribute", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(
                    f"{path}: a manifest needs the columns path, attribute, label "
                    f"(missing: {', '.join(sorted(missing))})"
                )
            for line, row in enumerate(reader, start=2):
                values = [(row.get(key) or "").strip() for key in ("path", "attribute", "label")]
                if not all(values):
                    skipped.append(_skip(f"{os.path.basename(path)}:{line}", "incomplete row"))
                    continue
                file, attribute, label = values
                samples.append(Sample(os.path.join(base, file), file, attribute, label))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a CSV manifest ({exc})") from None
    return samples, skipped


def check_samples(samples: Sequence[Sample], attribute_set: AttributeSet) -> tuple[list, list]:
    """Samples whose attribute and label the set has, and the others named with the reason."""
    kept, skipped = [], []
    for sample in samples:
        attribute = attribute_set.attributes.get(sample.attribute)
        if attribute is None:
            reason = f"attribute {sample.attribute!r} is not in the attribute set"
            skipped.append(_skip(sample.name, reason))
        elif sample.label not in attribute.labels:
            reason = (
                f"label {sample.label!r} is not a label of {sample.attribute} "
                f"({', '.join(attribute.labels)})"
            )
            skipped.append(_skip(sample.name, reason))
        else:
            kept.append(sample)
    return kept, skipped


def _skip(name: str, reason: str) -> dict:
    return {"path": name, "reason": reason}


# -- the service's path: decode, detect, crop, encode --------------------------------------------
@dataclass
class Encoded:
    """Image embeddings by file, and what happened to the files that have none."""

    embeddings: dict[str, Any] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0


def encode_samples(
    samples: Sequence[Sample],
    *,
    model: Any,
    detector: faces.FaceDetector,
    config: Mapping[str, Any],
    batch_size: int = 32,
    progress: bool | None = None,
    crop: Callable[[Image.Image, dict, list | None], Image.Image] | None = None,
) -> Encoded:
    """Decode, detect and crop each distinct image once, and encode the crops in batches (cut as
    analysis cuts them, at the model's crop_side, unless `crop` says otherwise)."""
    if crop is None:
        crop = functools.partial(aligned_crop, size=model.crop_side)
    from tqdm import tqdm

    names = {}
    for sample in samples:
        names.setdefault(sample.path, sample.name)
    result = Encoded(images=len(names))
    pending: list[tuple[str, Image.Image]] = []

    def flush() -> None:
        if pending:
            encoded = model.encode_images([image for _, image in pending])
            for (path, _), row in zip(pending, encoded, strict=True):
                result.embeddings[path] = row
            pending.clear()

    started = time.perf_counter()
    # disable=None: a bar on a terminal, nothing in logs and pipes.
    disable = None if progress is None else not progress
    for path, name in tqdm(names.items(), desc="eval", unit="img", disable=disable):
        try:
            image = _decode(path, config)
        except FaceappError as exc:
            result.skipped.append(_skip(name, f"unreadable image ({exc.code}: {exc.message})"))
            continue
        except OSError as exc:
            result.skipped.append(_skip(name, f"unreadable file ({exc.strerror or exc})"))
            continue
        found = faces.detect_faces(detector, image, int(config["DETECT_MAX_SIDE"]))
        if not found:
            result.no_face.append(name)
            continue
        largest = found[0].to_dict()  # the largest face, aligned as the service aligns it
        pending.append((path, crop(image, largest["box"], largest.get("landmarks"))))
        if len(pending) >= batch_size:
            flush()
    flush()
    result.seconds = time.perf_counter() - started
    return result


def _decode(path: str, config: Mapping[str, Any]) -> Image.Image:
    with open(path, "rb") as fh:
        data = fh.read(int(config["MAX_UPLOAD_BYTES"]) + 1)
    return decoding.decode_with_limits(data, config).image


# -- scoring and metrics ---------------------------------------------------------------------
@dataclass
class AttributeScores:
    """An attribute's encoded samples: true label indices and similarities (faces x labels)."""

    labels: tuple[str, ...]
    names: list[str]
    truth: np.ndarray
    similarities: np.ndarray


def similarities_by_attribute(
    samples: Sequence[Sample],
    encoded: Encoded,
    attribute_set: AttributeSet,
    label_embeddings: Mapping[str, Any],
) -> dict[str, AttributeScores]:
    """Group the encoded samples by attribute, with their cosine similarities to its labels."""
    import torch

    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.path in encoded.embeddings:
            grouped.setdefault(sample.attribute, []).append(sample)
    scores = {}
    for name in attribute_set.names():
        group = grouped.get(name)
        if not group:
            continue
        labels = attribute_set.attributes[name].labels
        faces_ = torch.stack([encoded.embeddings[s.path] for s in group])
        sims = (faces_ @ label_embeddings[name].T).float().numpy()
        truth = np.array([labels.index(s.label) for s in group])
        scores[name] = AttributeScores(labels, [s.name for s in group], truth, sims)
    return scores


def probabilities(sims: np.ndarray, logit_scale: float, temperature: float) -> np.ndarray:
    """The service's scores (faceapp.scoring) for a similarity matrix, as numpy."""
    import torch

    return scoring.probabilities(torch.from_numpy(sims), logit_scale, temperature).numpy()


@dataclass
class AttributeResult:
    """One attribute's figures on the dataset."""

    labels: tuple[str, ...]
    n: int
    accuracy: float
    balanced_accuracy: float
    recall: dict[str, float | None]
    confusion: list[list[int]]
    ece: float
    reliability: list[dict]
    coverage: list[dict]
    temperature: float = 1.0

    def to_json(self) -> dict:
        """The figures ``--json`` writes for an attribute (the issue's keys, no more)."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "ece": self.ece,
            "labels": list(self.labels),
            "confusion": self.confusion,
            "coverage": self.coverage,
        }


def attribute_metrics(
    truth: np.ndarray, probs: np.ndarray, labels: Sequence[str], temperature: float = 1.0
) -> AttributeResult:
    """Accuracy, balanced accuracy, recall per label, confusion (rows: truth), ECE, coverage."""
    truth = np.asarray(truth, dtype=int)
    n, k = probs.shape
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    support = confusion.sum(axis=1)
    recall = {
        label: (float(confusion[i, i] / support[i]) if support[i] else None)
        for i, label in enumerate(labels)
    }
    present = [value for value in recall.values() if value is not None]
    correct = predicted == truth
    confidence = probs.max(axis=1)
    ece, reliability = calibration_error(confidence, correct)
    return AttributeResult(
        labels=tuple(labels),
        n=int(n),
        accuracy=float(correct.mean()) if n else 0.0,
        balanced_accuracy=float(np.mean(present)) if present else 0.0,
        recall=recall,
        confusion=confusion.tolist(),
        ece=ece,
        reliability=reliability,
        coverage=coverage_curve(margins(probs), correct),
        temperature=temperature,
    )


def margins(probs: np.ndarray) -> np.ndarray:
    """Per row, the top score minus the second (scoring.margin_of, vectorised)."""
    if probs.shape[1] < 2:
        return probs[:, 0].copy()
    ordered = np.sort(probs, axis=1)
    return ordered[:, -1] - ordered[:, -2]


def calibration_error(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, list[dict]]:
    """Expected calibration error over ECE_BINS equal-width bins, and the bins themselves."""
    n = len(confidence)
    index = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    ece, bins = 0.0, []
    for b in range(ECE_BINS):
        members = index == b
        count = int(members.sum())
        entry = {"low": b / ECE_BINS, "high": (b + 1) / ECE_BINS, "count": count}
        if count:
            entry["confidence"] = float(confidence[members].mean())
            entry["accuracy"] = float(correct[members].mean())
            ece += count / n * abs(entry["accuracy"] - entry["confidence"])
        bins.append(entry)
    return float(ece), bins


def coverage_curve(margin: np.ndarray, correct: np.ndarray) -> list[dict]:
    """For each threshold of ABSTAIN_GRID: the share answered and their accuracy (None: none)."""
    n = len(margin)
    curve = []
    for threshold in ABSTAIN_GRID:
        answered = margin >= threshold  # scoring.answer abstains when margin < abstain_below
        count = int(answered.sum())
        curve.append(
            {
                "abstain_below": threshold,
                "coverage": count / n if n else 0.0,
                "accuracy": float(correct[answered].mean()) if count else None,
            }
        )
    return curve


def score_set(
    scores: Mapping[str, AttributeScores], attribute_set: AttributeSet, logit_scale: float
) -> dict[str, AttributeResult]:
    """Each attribute's figures with the temperature the attribute file gives it."""
    results = {}
    for name, group in scores.items():
        temperature = attribute_set.attributes[name].temperature
        probs = probabilities(group.similarities, logit_scale, temperature)
        results[name] = attribute_metrics(group.truth, probs, group.labels, temperature)
    return results


# -- calibration -----------------------------------------------------------------------------
def nll(logits: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / temperature)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(truth)), truth]))


def fit_temperature(logits: np.ndarray, truth: np.ndarray, iterations: int = 80) -> float:
    """The temperature of lowest NLL in TEMPERATURE_RANGE (golden-section search on log T).

    The NLL is convex in 1/T, so it has one minimum along log T and the search finds it."""
    truth = np.asarray(truth, dtype=int)
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, truth, math.exp(a)), nll(logits, truth, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, truth, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, truth, math.exp(b))
    return math.exp((low + high) / 2)


def fit_temperatures(scores: Mapping[str, AttributeScores], logit_scale: float) -> dict[str, float]:
    """A temperature per attribute, fitted on its samples (the model's logits, temperature 1)."""
    return {
        name: fit_temperature(logit_scale * group.similarities, group.truth)
        for name, group in scores.items()
    }


# -- one run -----------------------------------------------------------------------------------
@dataclass
class SetResult:
    """One attribute set's figures."""

    source: str
    digest: str
    attributes: dict[str, AttributeResult]


@dataclass
class Report:
    """Everything one run measured (faceapp/eval/report.py renders it)."""

    data: str
    model: dict
    images: int
    no_face: list[str]
    skipped: list[dict]
    seconds: float
    result: SetResult
    against: SetResult | None = None
    not_compared: dict[str, str] = field(default_factory=dict)
    scores: dict[str, AttributeScores] = field(default_factory=dict, repr=False)
    logit_scale: float = 1.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def comparable(a: AttributeSet, b: AttributeSet) -> tuple[list[str], dict[str, str]]:
    """Attributes both sets score with the same labels, and why the others are not compared."""
    same, reasons = [], {}
    for name, attribute in a.attributes.items():
        other = b.attributes.get(name)
        if other is None:
            reasons[name] = "not in the --against set"
        elif other.labels != attribute.labels:
            reasons[name] = "the --against set has other labels"
        else:
            same.append(name)
    return same, reasons


def evaluate(
    data: str,
    *,
    model: Any,
    attribute_set: AttributeSet,
    label_embeddings: Mapping[str, Any],
    detector: faces.FaceDetector,
    config: Mapping[str, Any],
    against: tuple[AttributeSet, Mapping[str, Any]] | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> Report:
    """Score the dataset at `data` with `attribute_set` (and `against`, on the same crops)."""
    samples, skipped = read_dataset(data)
    samples, unknown = check_samples(samples, attribute_set)
    encoded = encode_samples(
        samples,
        model=model,
        detector=detector,
        config=config,
        batch_size=batch_size,
        progress=progress,
    )
    scale = float(model.logit_scale)
    scores = similarities_by_attribute(samples, encoded, attribute_set, label_embeddings)
    report = Report(
        data=data,
        model={**model.describe(), "attributes_version": attribute_set.digest},
        images=encoded.images,
        no_face=encoded.no_face,
        skipped=skipped + unknown + encoded.skipped,
        seconds=encoded.seconds,
        result=SetResult(
            attribute_set.source, attribute_set.digest, score_set(scores, attribute_set, scale)
        ),
        scores=scores,
        logit_scale=scale,
    )
    if against is not None:
        other_set, other_embeddings = against
        names, report.not_compared = comparable(attribute_set, other_set)
        kept = [sample for sample in samples if sample.attribute in names]
        other = similarities_by_attribute(kept, encoded, other_set, other_embeddings)
        report.against = SetResult(
            other_set.source, other_set.digest, score_set(other, other_set, scale)
        )
    return report

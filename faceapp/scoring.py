"""The softmax-to-answer step: cosine similarities in, an attribute's answer out.

Pure functions, shared by the service (faceapp/analysis.py) and the evaluation harness
(faceapp/eval/evaluation.py), so what `flask eval` measures is what the API answers. A face's
scores for an attribute are ``softmax(logit_scale * similarity / temperature)`` over its labels;
the temperature is 1 unless the attribute file's ``calibration`` section sets one
(``eval --fit``).
The answer's ``margin`` is the top score minus the second; an attribute with ``abstain_below``
answers ``label: null, uncertain: true`` when the margin is below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Scored(Protocol):
    """What scoring needs of an attribute (faceapp.attributes.Attribute has it)."""

    labels: Sequence[str]
    temperature: float
    abstain_below: float | None


def probabilities(similarities: Any, logit_scale: float, temperature: float = 1.0):
    """Per face (row), the softmax over labels (columns) of the scaled, tempered similarities."""
    import torch

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature!r}")
    return torch.softmax(similarities * (logit_scale / temperature), dim=-1)


def margin_of(probs: Sequence[float]) -> float:
    """The top score minus the second (the top score itself when there is one label)."""
    ordered = sorted(probs, reverse=True)
    return ordered[0] - (ordered[1] if len(ordered) > 1 else 0.0)


def answer(
    probs: Sequence[float], labels: Sequence[str], abstain_below: float | None = None
) -> dict:
    """One attribute's answer for one face: label (None when abstaining), score, scores,
    margin, uncertain."""
    if len(probs) != len(labels) or not labels:
        raise ValueError(f"{len(probs)} scores for {len(labels)} labels")
    best = max(range(len(probs)), key=probs.__getitem__)
    margin = margin_of(probs)
    uncertain = abstain_below is not None and margin < abstain_below
    return {
        "label": None if uncertain else labels[best],
        "score": probs[best],
        "scores": dict(zip(labels, probs, strict=True)),
        "margin": margin,
        "uncertain": uncertain,
    }


def attribute_answers(similarities: Any, attribute: Scored, logit_scale: float) -> list[dict]:
    """The answers of every face (a row of `similarities`) for one attribute."""
    probs = probabilities(similarities, logit_scale, attribute.temperature)
    return [answer(row, attribute.labels, attribute.abstain_below) for row in probs.tolist()]

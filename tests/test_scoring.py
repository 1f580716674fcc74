"""Margins, abstaining and temperatures: in faceapp.scoring, the attribute file and the API."""

from __future__ import annotations

import math

import pytest
import torch

from faceapp import schemas, scoring
from faceapp.attributes import AttributeFileError, load_attribute_set
from tests.test_evaluation import ATTRIBUTES_YAML, analyze_once

ABSTAINING_YAML = ATTRIBUTES_YAML.replace(
    "  image_quality:\n", "    abstain_below: 1.0\n  image_quality:\n"
)


def test_answer_has_the_margin_and_abstains_below_the_threshold():
    answer = scoring.answer([0.2, 0.5, 0.3], ["a", "b", "c"])
    assert answer == {
        "label": "b",
        "score": 0.5,
        "scores": {"a": 0.2, "b": 0.5, "c": 0.3},
        "margin": pytest.approx(0.2),
        "uncertain": False,
    }
    assert scoring.answer([0.2, 0.5, 0.3], ["a", "b", "c"], abstain_below=0.19)["label"] == "b"
    withheld = scoring.answer([0.2, 0.5, 0.3], ["a", "b", "c"], abstain_below=0.21)
    assert withheld["label"] is None and withheld["uncertain"] is True
    assert withheld["scores"] == {"a": 0.2, "b": 0.5, "c": 0.3} and withheld["score"] == 0.5


def test_a_single_label_answers_with_its_score_as_the_margin():
    answer = scoring.answer([0.7], ["only"], abstain_below=0.75)
    assert answer["margin"] == pytest.approx(0.7)
    assert answer["label"] is None and answer["uncertain"] is True
    assert scoring.answer([0.7], ["only"], abstain_below=0.65)["label"] == "only"


def test_a_margin_equal_to_the_threshold_answers():
    assert scoring.answer([0.75, 0.25], ["a", "b"], abstain_below=0.5)["label"] == "a"


@pytest.mark.parametrize(("probs", "labels"), [([0.5, 0.5], ["a"]), ([], [])])
def test_scores_must_match_the_labels(probs, labels):
    with pytest.raises(ValueError, match=f"{len(probs)} scores for {len(labels)} labels"):
        scoring.answer(probs, labels)


def test_a_temperature_divides_the_log_odds():
    sims = torch.tensor([[0.30, 0.25, 0.10]])
    plain = scoring.probabilities(sims, 100.0)[0]
    tempered = scoring.probabilities(sims, 100.0, temperature=2.0)[0]
    assert math.log(plain[0] / plain[1]) == pytest.approx(5.0, rel=1e-5)
    assert math.log(tempered[0] / tempered[1]) == pytest.approx(2.5, rel=1e-5)
    with pytest.raises(ValueError, match="positive"):
        scoring.probabilities(sims, 100.0, temperature=0)


def test_the_default_set_neither_abstains_nor_is_tempered():
    attributes = load_attribute_set().attributes.values()
    assert all(a.abstain_below is None and a.temperature == 1.0 for a in attributes)


def test_abstain_below_and_calibration_are_checked_and_in_the_digest(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(ATTRIBUTES_YAML)
    plain = load_attribute_set(str(path)).digest
    path.write_text(ABSTAINING_YAML)
    abstaining = load_attribute_set(str(path))
    assert abstaining.attributes["lighting"].abstain_below == 1.0
    assert abstaining.digest != plain
    path.write_text(ATTRIBUTES_YAML + "calibration:\n  temperatures: {lighting: 2}\n")
    tempered = load_attribute_set(str(path))
    assert tempered.attributes["lighting"].temperature == 2.0
    assert tempered.digest not in (plain, abstaining.digest)
    path.write_text(ABSTAINING_YAML.replace("abstain_below: 1.0", "abstain_below: 1.5"))
    with pytest.raises(AttributeFileError, match=r"line 10: .*abstain_below: .*between 0 and 1"):
        load_attribute_set(str(path))
    path.write_text(ATTRIBUTES_YAML + "calibration:\n  temperatures: {mood: 2}\n")
    with pytest.raises(AttributeFileError, match="'mood', which is not an attribute"):
        load_attribute_set(str(path))
    path.write_text(ATTRIBUTES_YAML + "calibration:\n  temperatures: {lighting: 0}\n")
    with pytest.raises(AttributeFileError, match="between 0.01 and 100"):
        load_attribute_set(str(path))


def test_an_abstaining_attribute_is_served_uncertain_with_its_scores(
    config, tmp_path, astronaut_jpeg
):
    path = tmp_path / "abstaining.yaml"
    path.write_text(ABSTAINING_YAML)
    answer, client = analyze_once(config, astronaut_jpeg, path)
    lighting = answer["faces"][0]["attributes"]["lighting"]
    assert lighting["label"] is None and lighting["uncertain"] is True
    assert set(lighting["scores"]) == {"good", "dim"}
    # the API rounds every float to 4 places, each on its own
    assert lighting["margin"] == pytest.approx(abs(lighting["scores"]["good"] - 0.5) * 2, abs=2e-4)
    assert schemas.AnalyzeResponse().validate(answer) == {}  # the OpenAPI document allows it
    quality = answer["faces"][0]["attributes"]["image_quality"]
    assert quality["label"] in ("sharp", "blurry") and quality["uncertain"] is False
    info = {a["name"]: a for a in client.get("/api/attributes").get_json()["attributes"]}
    assert (
        info["lighting"]["abstain_below"] == 1.0 and info["image_quality"]["abstain_below"] is None
    )
    yaml_answer = client.post(
        "/api/analyze?format=yaml", json={"image_id": answer["image_id"]}
    ).get_data(as_text=True)
    assert "label: null" in yaml_answer and "uncertain: true" in yaml_answer


def test_the_default_set_answers_every_attribute_with_its_margin(config, astronaut_jpeg):
    answer, _ = analyze_once(config, astronaut_jpeg)
    for result in answer["faces"][0]["attributes"].values():
        ordered = sorted(result["scores"].values(), reverse=True)
        assert result["label"] is not None and result["uncertain"] is False
        assert result["margin"] == pytest.approx(ordered[0] - ordered[1], abs=2e-4)


def test_the_tester_page_shows_an_abstaining_attribute_as_uncertain(
    config, tmp_path, astronaut_jpeg
):
    path = tmp_path / "abstaining.yaml"
    path.write_text(ABSTAINING_YAML)
    answer, client = analyze_once(config, astronaut_jpeg, path)
    page = f"/app/images/{answer['image_id']}"
    posted = client.post(page, data={"labels": ""})
    assert posted.status_code == 303
    text = client.get(posted.headers["Location"]).get_data(as_text=True)
    # lighting abstains (no winner row, said so); image_quality still names its winner
    assert text.count("attribute-uncertain") == 1 and "uncertain <b>(abstained)</b>" in text
    assert text.count('<tr class="win">') == 1

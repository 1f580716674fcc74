"""POST /api/analyze: zero-shot attributes per face, cached, explained, in JSON and YAML."""

from __future__ import annotations

import io
import math
import os
import shutil

import pytest
from ruamel.yaml import YAML

from faceapp import create_app
from faceapp.attributes import DEFAULT_FILE, AttributeFileError, load_attribute_set
from tests.conftest import ADMIN

ATTRIBUTES = [
    "expression",
    "age_group",
    "eyewear",
    "facial_hair",
    "head_pose",
    "headwear",
    "face_mask",
    "lighting",
    "image_quality",
]


@pytest.fixture
def stored(client, astronaut_jpeg) -> str:
    return client.post(
        "/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    ).get_json()["image_id"]


def analyze(client, **body):
    return client.post("/api/analyze", json=body)


@pytest.fixture
def encoded_texts(monkeypatch) -> list[list[str]]:
    """Every batch of texts any model encodes from now on, its warm-up text left out."""
    from faceapp.face_models import WARMUP_TEXT, LoadedModel

    batches: list[list[str]] = []
    encode = LoadedModel.encode_texts

    def counted(model, texts):
        if list(texts) != [WARMUP_TEXT]:
            batches.append(list(texts))
        return encode(model, texts)

    monkeypatch.setattr(LoadedModel, "encode_texts", counted)
    return batches


def test_full_document_for_the_astronaut(client, stored):
    answer = analyze(client, image_id=stored)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert list(body) == ["image_id", "model", "faces", "face_count", "cached", "timings_ms"]
    assert body["face_count"] == {"found": 1, "not_analysed": 0, "max_faces": 5}
    assert body["image_id"] == stored and body["cached"] is False
    assert body["model"]["random_weights"] is True and len(body["model"]["version"]) == 12
    assert {"decode", "encode", "total"} <= set(body["timings_ms"])
    [face] = body["faces"]
    assert face["detected"] is True and set(face["box"]) == {"x", "y", "width", "height"}
    assert list(face["attributes"]) == ATTRIBUTES
    assert "labels" not in face and "embedding" not in face
    for name, result in face["attributes"].items():
        scores = result["scores"]
        assert math.isclose(sum(scores.values()), 1.0, abs_tol=1e-3), name
        assert result["label"] == max(scores, key=scores.get)
        assert result["score"] == scores[result["label"]]
    assert list(face["attributes"]["expression"]["scores"]) == [
        "neutral",
        "happy",
        "sad",
        "angry",
        "surprised",
        "fearful",
        "disgusted",
    ]


def test_second_call_is_a_cache_hit_and_wipe_cache_recomputes(client, stored):
    first = analyze(client, image_id=stored).get_json()
    second = analyze(client, image_id=stored).get_json()
    assert second["cached"] is True and second["faces"] == first["faces"]
    third = analyze(client, image_id=stored, wipe_cache=True).get_json()
    assert third["cached"] is False and third["faces"] == first["faces"]
    events = [e["event"] for e in client.get(f"/api/images/{stored}/trace").get_json()["events"]]
    assert events == ["validated", "analyzed", "cache_hit", "wiped", "analyzed"]


def test_wipe_cache_drops_the_other_option_sets_too_while_the_model_encodes(client, stored):
    """The wipe runs while the model encodes (faceapp/services.py), and still drops every
    cached result of the image, not only the one it recomputes, before the new one is stored."""
    subset = {"attributes": ["eyewear"]}
    assert analyze(client, image_id=stored, **subset).get_json()["cached"] is False
    assert analyze(client, image_id=stored, **subset).get_json()["cached"] is True
    assert analyze(client, image_id=stored, wipe_cache=True).get_json()["cached"] is False
    assert analyze(client, image_id=stored, **subset).get_json()["cached"] is False
    assert analyze(client, image_id=stored).get_json()["cached"] is True  # the fresh one stays


def test_wipe_cache_on_an_image_that_fails_validation_still_drops_its_results(client, coffee_jpeg):
    """No model work to overlap: a 409 image.not_valid still wipes what force had cached."""
    image = {"file": (io.BytesIO(coffee_jpeg), "c.jpg")}
    image_id = client.post("/api/validate", data=image).get_json()["image_id"]
    assert analyze(client, image_id=image_id, force=True).get_json()["cached"] is False
    assert analyze(client, image_id=image_id, force=True).get_json()["cached"] is True
    refused = analyze(client, image_id=image_id, wipe_cache=True)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "image.not_valid"
    assert analyze(client, image_id=image_id, force=True).get_json()["cached"] is False


def test_options_are_part_of_the_cache_key(client, stored):
    analyze(client, image_id=stored)
    subset = analyze(client, image_id=stored, attributes=["eyewear", "expression"]).get_json()
    assert subset["cached"] is False
    assert list(subset["faces"][0]["attributes"]) == ["eyewear", "expression"]


def test_free_text_labels_and_embedding(client, app, stored):
    labels = ["a person wearing a red hat", "an astronaut in a space suit", "a cat"]
    body = analyze(client, image_id=stored, labels=labels, include_embedding=True).get_json()
    face = body["faces"][0]
    assert list(face["labels"]) == labels
    assert math.isclose(sum(face["labels"].values()), 1.0, abs_tol=1e-3)
    with app.app_context():
        from faceapp.face_models import models

        size = models.get().model.config.projection_dim
    assert len(face["embedding"]) == size
    assert math.isclose(math.sqrt(sum(v * v for v in face["embedding"])), 1.0, abs_tol=1e-3)


def test_attribute_prompts_are_encoded_once_not_per_request(client, stored, encoded_texts):
    analyze(client, image_id=stored)
    calls = len(encoded_texts)
    analyze(client, image_id=stored, wipe_cache=True)
    analyze(client, image_id=stored, attributes=["expression"])
    assert len(encoded_texts) == calls
    analyze(client, image_id=stored, labels=["a smiling astronaut", "a sad astronaut"])
    assert len(encoded_texts) == calls + 1  # the request's own labels, once
    analyze(
        client, image_id=stored, labels=["a sad astronaut", "a smiling astronaut"], wipe_cache=True
    )
    assert len(encoded_texts) == calls + 1  # seen before: from the bounded cache


def test_label_embeddings_are_reused_from_disk_by_the_next_worker(
    config, stored, client, encoded_texts
):
    analyze(client, image_id=stored)  # this worker encodes and saves them
    encoded_texts.clear()
    second = create_app(config)
    with second.app_context():
        from faceapp.face_models import models

        models.get()
        assert encoded_texts == []


def test_a_changed_attribute_file_changes_the_version_and_misses_the_cache(
    config, tmp_path, astronaut_jpeg
):
    client = create_app(config).test_client()
    image_id = client.post(
        "/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    ).get_json()["image_id"]
    before = analyze(client, image_id=image_id).get_json()
    changed = tmp_path / "attributes.yaml"
    shutil.copy(DEFAULT_FILE, changed)
    changed.write_text(changed.read_text().replace("a person smiling happily", "a person grinning"))
    client = create_app({**config, "ATTRIBUTES_FILE": str(changed)}).test_client()
    after = analyze(client, image_id=image_id).get_json()
    assert after["model"]["version"] != before["model"]["version"]
    assert after["model"]["weights_version"] == before["model"]["weights_version"]
    assert after["cached"] is False


def test_a_broken_attribute_file_fails_the_start_naming_the_line(config, tmp_path):
    broken = tmp_path / "attributes.yaml"
    broken.write_text("attributes:\n  mood:\n    labels:\n      happy: [a smile]\n      sad: 12\n")
    with pytest.raises(AttributeFileError, match=r"line 5: attributes.mood.labels.sad"):
        create_app({**config, "ATTRIBUTES_FILE": str(broken)})
    broken.write_text("attributes:\n  mood:\n    labels: {only: one}\n")
    with pytest.raises(AttributeFileError, match="2 to 64 labels"):
        load_attribute_set(str(broken))


def test_one_shot_analyze_validates_and_stores(client, astronaut_jpeg):
    answer = client.post("/api/analyze", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")})
    assert answer.status_code == 200
    image_id = answer.get_json()["image_id"]
    assert client.get(f"/api/images/{image_id}").status_code == 200
    assert analyze(client, image_id=image_id).get_json()["cached"] is True


def test_invalid_image_needs_force(client, coffee_jpeg):
    image_id = client.post(
        "/api/validate", data={"file": (io.BytesIO(coffee_jpeg), "c.jpg")}
    ).get_json()["image_id"]
    refused = analyze(client, image_id=image_id)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "image.not_valid"
    assert "face.none" in refused.get_json()["error"]["message"]
    forced = analyze(client, image_id=image_id, force=True).get_json()
    [region] = forced["faces"]
    assert region["detected"] is False and region["confidence"] == 0.0  # no detector found it
    assert region["box"] == {"x": 0, "y": 0, "width": 600, "height": 400}  # the whole photo


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "input.missing"),
        ({"image_id": "nope"}, 400, "image_id.invalid"),
        ({"image_id": "0" * 64}, 404, "image_id.not_found"),
        ({"image_id": "0" * 64, "image_base64": "aGVsbG8="}, 400, "input.ambiguous"),
        ({"image_id": "0" * 64, "attributes": ["expression", "gender"]}, 400, "input.invalid"),
        ({"image_id": "0" * 64, "labels": ["x"] * 33}, 400, "input.invalid"),
        ({"image_id": "0" * 64, "labels": ["x" * 201]}, 400, "input.invalid"),
        ({"image_id": "0" * 64, "labels": "not a list"}, 400, "input.invalid"),
        ({"image_id": "0" * 64, "include_embedding": "maybe"}, 400, "input.invalid"),
    ],
)
def test_analyze_errors(client, body, status, code):
    answer = analyze(client, **body)
    assert answer.status_code == status
    assert answer.get_json()["error"]["code"] == code


def test_unknown_attribute_is_named(client, stored):
    answer = analyze(client, image_id=stored, attributes=["gender"])
    assert "'gender'" in answer.get_json()["error"]["message"]
    assert answer.get_json()["error"]["field"] == "attributes"


def test_model_not_ready_is_503(config, astronaut_jpeg):
    client = create_app({**config, "MODEL_NAME": "openai/clip-vit-base-patch32"}).test_client()
    image_id = client.post(
        "/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    ).get_json()["image_id"]
    answer = analyze(client, image_id=image_id)
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "model.not_ready"


def test_form_posts_accept_lists_and_flags(client, stored):
    answer = client.post(
        "/api/analyze",
        data={
            "image_id": stored,
            "attributes": "eyewear,lighting",
            "labels": ["a hat", "a helmet"],
            "include_embedding": "on",
        },
    )
    face = answer.get_json()["faces"][0]
    assert list(face["attributes"]) == ["eyewear", "lighting"]
    assert list(face["labels"]) == ["a hat", "a helmet"] and "embedding" in face


@pytest.mark.parametrize("how", ["query", "accept"])
def test_yaml_equals_json(client, stored, how):
    as_json = analyze(client, image_id=stored, labels=["a hat", "no hat"]).get_json()
    if how == "query":
        answer = client.post(
            "/api/analyze?format=yaml", json={"image_id": stored, "labels": ["a hat", "no hat"]}
        )
    else:
        answer = client.post(
            "/api/analyze",
            json={"image_id": stored, "labels": ["a hat", "no hat"]},
            headers={"Accept": "application/yaml"},
        )
    assert answer.mimetype == "application/yaml"
    text = answer.get_data(as_text=True)
    assert "!!python" not in text and "!!" not in text
    loaded = YAML(typ="safe", pure=True).load(text)
    as_json["cached"] = True  # the YAML call came second: a cache hit
    loaded["timings_ms"] = as_json["timings_ms"] = None
    assert loaded == as_json


def test_attributes_endpoint_lists_the_set(client):
    body = client.get("/api/attributes").get_json()
    assert [a["name"] for a in body["attributes"]] == ATTRIBUTES
    expression = body["attributes"][0]
    assert expression["labels"][1] == "happy"
    assert "a photo of a person smiling happily." in expression["prompts"]["happy"]
    assert len(body["digest"]) == 12


def test_analysis_survives_a_delete_race(client, stored):
    analyze(client, image_id=stored)
    client.delete(f"/api/images/{stored}", headers=ADMIN)
    answer = analyze(client, image_id=stored)
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "image_id.not_found"


def test_the_example_attribute_file_loads_with_its_own_templates():
    import os

    from faceapp.attributes import DEFAULT_FILE as default

    example = load_attribute_set(os.path.join(os.path.dirname(default), "attributes.example.yaml"))
    assert example.names() == ["expression", "hair_colour"]
    hair = example.attributes["hair_colour"]
    assert hair.prompts[hair.labels.index("red")] == (
        "a photo of a person with red hair.",
        "a portrait of someone with red hair.",
        "a photo of a person with ginger hair.",
        "a portrait of someone with ginger hair.",
    )
    assert example.digest != load_attribute_set().digest


def test_a_restarted_worker_reuses_the_label_embeddings_and_answers_alike(config, astronaut_jpeg):
    answers = []
    for _ in range(2):  # the second app finds the first one's label embeddings on disk
        client = create_app(config).test_client()
        assert client.post("/api/setup", headers=ADMIN).status_code == 200
        upload = {"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
        image_id = client.post("/api/validate", data=upload).get_json()["image_id"]
        answer = analyze(client, image_id=image_id, wipe_cache=True)
        assert answer.status_code == 200, answer.get_json()
        answers.append(answer.get_json()["faces"][0]["attributes"])
    cached = os.listdir(os.path.join(config["MODELS_DIR"], ".label-embeddings"))
    assert [name for name in cached if name.endswith(".safetensors")]
    assert answers[0] == answers[1]


def test_the_analyzers_used_before_init_app_say_so():
    from flask import Flask

    from faceapp import analysis

    with Flask(__name__).app_context(), pytest.raises(RuntimeError, match="init_app"):
        analysis.attribute_set()


def test_new_temperatures_keep_the_label_embeddings_but_not_the_answers(
    config, tmp_path, encoded_texts
):
    """The label-embedding cache is keyed on the prompts: recalibrating (`flask eval --fit`)
    changes the attribute set's version, not the embeddings, so no worker re-encodes them."""
    import shutil

    from faceapp.attributes import DEFAULT_FILE, write_calibration

    path = tmp_path / "attributes.yaml"
    shutil.copy(DEFAULT_FILE, path)
    before = load_attribute_set(str(path))
    first = create_app({**config, "ATTRIBUTES_FILE": str(path)}).test_client()
    assert first.post("/api/setup", headers=ADMIN).status_code == 200
    cache = os.path.join(config["MODELS_DIR"], ".label-embeddings")
    files = sorted(os.listdir(cache))

    write_calibration(str(path), {"lighting": 2.0}, model="m", fitted_on="d", images=9)
    after = load_attribute_set(str(path))
    assert after.digest != before.digest and after.prompts_digest() == before.prompts_digest()
    app = create_app({**config, "ATTRIBUTES_FILE": str(path)})
    with app.app_context():
        from faceapp.face_models import models

        models.load()
        calls = len(encoded_texts)
        from faceapp import analysis

        scorer = analysis.analyzer()
        assert len(encoded_texts) == calls  # nothing encoded: the cached rows were read
        assert scorer.describe()["attributes_version"] == after.digest
    assert sorted(os.listdir(cache)) == files  # the same file, nothing added

    path.write_text(path.read_text().replace("a happy, smiling face", "a joyful face"))
    changed = load_attribute_set(str(path))
    assert changed.prompts_digest() != before.prompts_digest()


def test_label_embeddings_are_the_normalised_mean_of_each_labels_prompts(app, client):
    """Each label's row is the unit mean of its own prompts' text embeddings, in label order."""
    import torch

    from faceapp import analysis

    assert (
        client.post("/api/setup", headers={"Authorization": "Bearer admin-key"}).status_code == 200
    )
    with app.app_context():
        scorer = analysis.analyzer()
        for name, attribute in scorer.attributes.attributes.items():
            rows = scorer.label_embeddings[name]
            assert rows.shape[0] == len(attribute.labels)
            for index, prompts in enumerate(attribute.prompts):
                alone = scorer.engine.run(lambda p=prompts: scorer.model.encode_texts(list(p)))
                expected = torch.nn.functional.normalize(alone.mean(dim=0), dim=-1)
                assert torch.allclose(rows[index], expected, atol=1e-5), (name, index)


def test_free_text_labels_are_kept_in_a_bounded_recently_used_cache(app, client, monkeypatch):
    import torch

    from faceapp import analysis

    monkeypatch.setattr(analysis, "FREE_TEXT_CACHE_SIZE", 2)
    assert (
        client.post("/api/setup", headers={"Authorization": "Bearer admin-key"}).status_code == 200
    )
    with app.app_context():
        scorer = analysis.analyzer()
        encoded: list[str] = []
        real = scorer.model.encode_texts

        def counting(texts):
            encoded.extend(texts)
            return real(texts)

        monkeypatch.setattr(scorer.model, "encode_texts", counting)
        first = scorer.free_text_rows(["a", "b"])
        assert encoded == ["a", "b"]
        scorer.free_text_rows(["b"])  # a hit: nothing encoded, "b" now the most recent
        scorer.free_text_rows(["c"])  # evicts "a", the least recently used
        assert encoded == ["a", "b", "c"]
        again = scorer.free_text_rows(["b", "a"])  # "b" kept, "a" encoded again
        assert encoded == ["a", "b", "c", "a"]
        assert torch.allclose(again[0], first[1]) and torch.allclose(again[1], first[0])


def test_labels_the_cache_cannot_hold_are_encoded_again_in_the_callers_turn(
    app, client, monkeypatch
):
    """More labels than the cache holds are evicted before they are read back: encoded again,
    as the same client's job (its turn in the fair queue, never another's)."""
    from faceapp import analysis

    monkeypatch.setattr(analysis, "FREE_TEXT_CACHE_SIZE", 1)
    assert (
        client.post("/api/setup", headers={"Authorization": "Bearer admin-key"}).status_code == 200
    )
    with app.app_context():
        scorer = analysis.analyzer()
        scorer.engine.record = True
        assert len(scorer.free_text_rows(["a", "b"], client="key:caller")) == 2
        served = [who for batch in scorer.engine.served for who, _ in batch]
        assert served == ["key:caller", "key:caller"]  # the first encoding, then the second

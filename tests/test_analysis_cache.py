"""What analyses reuse and what they redo (issue 19): the label-embedding cache file, a repeated
attribute name, and wipe_cache on an upload."""

from __future__ import annotations

import glob
import io
import os

import torch
from safetensors.torch import load_file, save_file

from faceapp import analysis, create_app
from tests.conftest import ADMIN


def _setup(app) -> None:
    assert app.test_client().post("/api/setup", headers=ADMIN).status_code == 200


def test_a_label_cache_file_for_other_attributes_is_not_used(config):
    first = create_app(config)
    _setup(first)
    [path] = glob.glob(os.path.join(config["MODELS_DIR"], ".label-embeddings", "*.safetensors"))
    names = set(load_file(path))
    # The same file name with embeddings for other attribute names (a hand-edited attribute
    # file whose prompts hashed the same, or a file from another build).
    save_file({"not-an-attribute": torch.zeros(2, 4)}, path)

    second = create_app(config)
    _setup(second)
    scorer = second.extensions[analysis.EXTENSION_KEY].analyzer
    assert set(scorer.label_embeddings) == names
    assert set(load_file(path)) == names  # recomputed and written back


def _analyze(client, **body):
    answer = client.post("/api/analyze", json=body)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def test_a_repeated_attribute_answers_like_one_from_the_same_cache_entry(client, astronaut_jpeg):
    image = {"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    image_id = client.post("/api/validate", data=image).get_json()["image_id"]
    once = _analyze(client, image_id=image_id, attributes=["eyewear"])
    twice = _analyze(client, image_id=image_id, attributes=["eyewear", "eyewear"])
    assert twice["cached"] is True and twice["faces"] == once["faces"]
    assert list(twice["faces"][0]["attributes"]) == ["eyewear"]


def test_wipe_cache_on_an_upload_drops_the_cached_results(client, astronaut_jpeg):
    def send(**fields):
        data = {"file": (io.BytesIO(astronaut_jpeg), "a.jpg"), **fields}
        answer = client.post("/api/analyze", data=data)
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    first = send()
    assert first["cached"] is False and send()["cached"] is True
    wiped = send(wipe_cache="true")
    assert wiped["cached"] is False and wiped["faces"] == first["faces"]
    trace = client.get(f"/api/images/{first['image_id']}/trace").get_json()["events"]
    events = [event["event"] for event in trace]
    assert events[-3:] == ["wiped", "validated", "analyzed"]

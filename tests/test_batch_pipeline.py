"""faceapp.batch.pipeline: one input, one line, the service's own way (real photos)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from faceapp.batch.pipeline import Options, Pipeline, codes, source_kind
from faceapp.errors import FaceappError
from faceapp.store import image_id_for
from tests.conftest import jpeg_bytes


@pytest.fixture
def write(tmp_path):
    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    return write


def _api(client, data: bytes, **fields) -> tuple[dict, dict]:
    validated = client.post(
        "/api/validate",
        data={"file": (io.BytesIO(data), "x.jpg")},
        content_type="multipart/form-data",
    )
    analyzed = client.post(
        "/api/analyze",
        data={"file": (io.BytesIO(data), "x.jpg"), **fields},
        content_type="multipart/form-data",
    )
    return validated.get_json(), analyzed


def test_a_valid_photo_is_the_validate_and_analyze_answers(app, client, write, astronaut_jpeg):
    path = write("astronaut.jpg", astronaut_jpeg)
    line = Pipeline(app, Options()).process(path)
    assert list(line) == [
        "source", "image_id", "valid", "errors", "warnings", "faces", "face_count", "model"
    ]  # fmt: skip
    validated, analyzed = _api(client, astronaut_jpeg)
    assert analyzed.status_code == 200
    analyzed = analyzed.get_json()
    assert line["source"] == path
    assert line["image_id"] == image_id_for(astronaut_jpeg) == validated["image_id"]
    assert {k: line[k] for k in ("valid", "errors", "warnings")} == {
        k: validated[k] for k in ("valid", "errors", "warnings")
    }
    assert line["valid"] is True
    assert len(line["faces"]) == 1
    assert line["faces"] == analyzed["faces"]  # same crops, same encoder, same scoring
    assert line["face_count"] == analyzed["face_count"] == {
        "found": 1, "not_analysed": 0, "max_faces": 5
    }  # fmt: skip
    assert line["model"] == analyzed["model"]


def test_options_are_the_apis(app, client, write, astronaut_jpeg):
    path = write("a.jpg", astronaut_jpeg)
    options = Options(
        attributes=("age_group",),
        labels=("a smiling person", "a frowning person"),
        include_embedding=True,
    )
    line = Pipeline(app, options).process(path)
    _, analyzed = _api(
        client,
        astronaut_jpeg,
        attributes="age_group",
        labels="a smiling person,a frowning person",
        include_embedding="true",
    )
    face, expected = line["faces"][0], analyzed.get_json()["faces"][0]
    assert list(face["attributes"]) == ["age_group"]
    assert face == expected
    assert len(face["embedding"]) > 0


def test_an_invalid_photo_is_not_scored_unless_forced(app, client, write, coffee_jpeg):
    path = write("coffee.jpg", coffee_jpeg)
    line = Pipeline(app, Options()).process(path)
    assert line["valid"] is False
    assert codes(line) == ["face.none"]
    assert line["faces"] == []
    forced = Pipeline(app, Options(force=True)).process(path)
    _, analyzed = _api(client, coffee_jpeg, force="true")
    assert forced["valid"] is False and forced["errors"] == line["errors"]
    assert forced["faces"] == analyzed.get_json()["faces"]
    assert forced["faces"][0]["detected"] is False  # the whole image, as the API scores it


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "image.empty"),
        (b"hello, not an image\n", "image.unsupported_format"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 40, "image.corrupt"),
    ],
)
def test_bytes_that_do_not_decode_get_the_apis_error(app, client, write, data, code):
    path = write("broken.jpg", data)
    line = Pipeline(app, Options()).process(path)
    assert line == {
        "source": path,
        "image_id": image_id_for(data),
        "error": {"code": code, "message": line["error"]["message"]},
    }
    answer = client.post(
        "/api/validate",
        data={"file": (io.BytesIO(data), "b.jpg")},
        content_type="multipart/form-data",
    ).get_json()
    assert answer["error"]["code"] == code


def test_a_truncated_photo_is_corrupt(app, write, astronaut_jpeg):
    line = Pipeline(app, Options()).process(write("cut.jpg", astronaut_jpeg[:2000]))
    assert codes(line) == ["image.corrupt"]


def test_a_missing_or_unreadable_file_is_an_error_line_without_image_id(app, tmp_path):
    pipeline = Pipeline(app, Options())
    gone = pipeline.process(str(tmp_path / "gone.jpg"))
    assert gone["image_id"] is None and gone["error"]["code"] == "input.missing"
    folder = pipeline.process(str(tmp_path))
    assert folder["image_id"] is None and folder["error"]["code"] == "input.invalid"


def test_a_file_over_the_upload_limit_is_too_large(config, write, astronaut_jpeg):
    from faceapp import create_app

    config["MAX_UPLOAD_BYTES"] = 1000
    line = Pipeline(create_app(config), Options()).process(write("big.jpg", astronaut_jpeg))
    assert line["image_id"] is None  # refused before the bytes were all read
    assert codes(line) == ["image.too_large"]


def test_given_bytes_are_the_input_and_the_source_names_them(app, astronaut_jpeg):
    line = Pipeline(app, Options()).process("upload #1", data=astronaut_jpeg, kind="file")
    assert line["source"] == "upload #1" and line["valid"] is True


def test_max_faces_scores_the_largest_faces(app, write, astronaut):
    # Two astronauts side by side: face.multiple, so force; max_faces=1 scores the larger one.
    wide = Image.new("RGB", (1024, 512))
    wide.paste(astronaut, (0, 0))
    wide.paste(astronaut.resize((400, 400)), (600, 50))
    path = write("two.jpg", jpeg_bytes(wide))
    both = Pipeline(app, Options(force=True)).process(path)
    one = Pipeline(app, Options(force=True, max_faces=1)).process(path)
    assert len(both["faces"]) == 2 and "face.multiple" in codes(both)
    assert one["faces"] == both["faces"][:1]
    assert both["face_count"] == {"found": 2, "not_analysed": 0, "max_faces": 5}
    assert one["face_count"] == {"found": 2, "not_analysed": 1, "max_faces": 1}
    unforced = Pipeline(app, Options(max_faces=1)).process(path)
    assert unforced["faces"] == []  # invalid: no face scored, so none of the two analysed
    assert unforced["face_count"] == {"found": 2, "not_analysed": 2, "max_faces": 1}


@pytest.mark.parametrize(
    "options",
    [
        Options(attributes=("no-such-attribute",)),
        Options(labels=("a cat", "A CAT")),
        Options(max_faces=0),
        Options(labels=("",)),
    ],
)
def test_a_bad_option_is_refused_when_the_pipeline_is_built(app, options):
    with pytest.raises(FaceappError) as caught:
        Pipeline(app, options)
    assert caught.value.code == "input.invalid"


def test_an_attribute_file_of_its_own(app, write, astronaut_jpeg, tmp_path):
    yaml = tmp_path / "attrs.yaml"
    yaml.write_text(
        "attributes:\n"
        "  glasses:\n"
        "    labels:\n"
        "      yes: [a photo of a person wearing glasses]\n"
        "      no: [a photo of a person without glasses]\n"
    )
    line = Pipeline(app, Options(), attributes_file=str(yaml)).process(
        write("a.jpg", astronaut_jpeg)
    )
    assert list(line["faces"][0]["attributes"]) == ["glasses"]
    assert (
        line["model"]["attributes_version"]
        != Pipeline(app, Options()).model_info["attributes_version"]
    )


def test_options_round_trip_through_a_document():
    options = Options(attributes=("age_group",), labels=("x",), include_embedding=True, max_faces=2)
    assert Options.from_dict(options.to_dict()) == options


def test_source_kind():
    assert source_kind("https://example.com/a.jpg") == "image_url"
    assert source_kind("ftp://example.com/a.jpg") == "image_url"
    assert source_kind("photos/a.jpg") == "file"
    assert source_kind("/abs/http:/a.jpg") == "file"

"""`flask eval`: a labelled folder of real photos through the service's own path, measured.

The folder is built from scikit-image's astronaut: mirrored, cropped, darkened, blurred,
downscaled and stored sideways with an EXIF orientation, plus files that must be skipped. A stub
encoder whose answers are set by what it sees (brightness, sharpness) makes every figure
computable by hand; the tiny random CLIP runs the same thing end to end through the CLI.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from faceapp import create_app, scoring
from faceapp.attributes import DEFAULT_FILE, load_attribute_set
from faceapp.eval import evaluation
from faceapp.faces import HaarFaceDetector
from tests.conftest import jpeg_bytes

ATTRIBUTES_YAML = """\
# A two-attribute set for the evaluation tests.
version: eval-test
templates:
  - "a photo of {}."
attributes:
  lighting:
    labels:
      good: "a well-lit face"
      dim: "a dark face"
  image_quality:
    labels:
      sharp: "a sharp face"
      blurry: "a blurry face"
"""
OTHER_PROMPTS_YAML = ATTRIBUTES_YAML.replace("a well-lit face", "a brightly lit face")
CONFIG = {
    "MAX_UPLOAD_BYTES": 10_000_000,
    "MAX_IMAGE_PIXELS": 50_000_000,
    "STORED_MAX_SIDE": 2000,
    "MAX_IMAGE_FRAMES": 100,
    "MAX_DECODE_MEMORY": 320 * 1024**2,
    "DETECT_MAX_SIDE": 640,
}


def _save(path, image: Image.Image, **save) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(image, **save))


@pytest.fixture(scope="session")
def labelled(tmp_path_factory, astronaut, coffee_jpeg):
    """DIR/<attribute>/<label>/*.jpg with known answers, and entries that must be skipped."""
    root = tmp_path_factory.mktemp("labelled")
    good, dim = root / "lighting" / "good", root / "lighting" / "dim"
    _save(good / "astronaut.jpg", astronaut)
    _save(good / "mirrored.jpg", astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    _save(good / "cropped.jpg", astronaut.crop((60, 0, 400, 340)))
    _save(dim / "darkened-40.jpg", ImageEnhance.Brightness(astronaut).enhance(0.4))
    _save(dim / "darkened-10.jpg", ImageEnhance.Brightness(astronaut).enhance(0.1))
    sharp, blurry = root / "image_quality" / "sharp", root / "image_quality" / "blurry"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter; decoding must turn it upright
    _save(sharp / "sideways.jpg", astronaut.transpose(Image.Transpose.ROTATE_90), exif=exif)
    _save(sharp / "small.jpg", astronaut.resize((256, 256)))
    _save(blurry / "blur-1.5.jpg", astronaut.filter(ImageFilter.GaussianBlur(1.5)))
    _save(blurry / "blur-5.jpg", astronaut.filter(ImageFilter.GaussianBlur(5)))
    (good / "coffee.jpg").write_bytes(coffee_jpeg)  # a photo with no face
    (dim / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (good / "notes.txt").write_text("not an image")
    _save(root / "lighting" / "neon" / "x.jpg", astronaut)  # not a label of lighting
    _save(root / "gender" / "x" / "y.jpg", astronaut)  # not an attribute of the set
    (root / "README.txt").write_text("outside the layout")
    return root


@pytest.fixture
def attribute_file(tmp_path):
    path = tmp_path / "attributes.yaml"
    path.write_text(ATTRIBUTES_YAML)
    return path


class StubModel:
    """Answers set by the crop: log-probabilities [good, dim, sharp, blurry] as the embedding.

    With the identity as label embeddings and logit_scale 1, the service's softmax gives these
    probabilities back exactly. Lighting follows the crop's mean grey level (the 40 % darkened
    face still reads as good: one known mistake); quality follows its mean gradient relative to
    brightness (darkening keeps it, blurring lowers it). Measured on the crops: grey level ~137
    plain, ~55 darkened to 40 %, ~13 to 10 %; relative gradient ~0.098 sharp (~0.145 downscaled),
    ~0.065 at blur 1.5, ~0.035 at blur 5 (on the service's aligned crop): each well inside its band.
    """

    crop_side = None  # like a processor that resizes every crop itself: crops at their own size
    logit_scale = 1.0
    version = "stub"

    def __init__(self) -> None:
        self.encoded = 0
        self.batches: list[int] = []

    def describe(self) -> dict:
        return {"name": "stub", "version": self.version, "device": "cpu", "dtype": "float32"}

    def encode_images(self, images):
        self.encoded += len(images)
        self.batches.append(len(images))
        rows = []
        for image in images:
            grey = np.asarray(image.convert("L"), dtype=float)
            level = grey.mean()
            edges = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
            edges /= max(level, 1.0)
            good = 0.88 if level > 100 else 0.64 if level > 40 else 0.28
            sharp = 0.9 if edges > 0.085 else 0.43 if edges > 0.05 else 0.05
            rows.append([math.log(good), math.log(1 - good), math.log(sharp), math.log(1 - sharp)])
        return torch.tensor(rows, dtype=torch.float32)


STUB_EMBEDDINGS = {"lighting": torch.eye(4)[:2], "image_quality": torch.eye(4)[2:]}


def stub_report(data, attribute_file, **kwargs):
    model = StubModel()
    report = evaluation.evaluate(
        str(data),
        model=model,
        attribute_set=load_attribute_set(str(attribute_file)),
        label_embeddings=STUB_EMBEDDINGS,
        detector=HaarFaceDetector(),
        config=CONFIG,
        progress=False,
        **kwargs,
    )
    return report, model


def test_metrics_from_the_stub_are_the_hand_computed_ones(labelled, attribute_file):
    report, model = stub_report(labelled, attribute_file, batch_size=3)
    lighting = report.result.attributes["lighting"]
    # good: 3 bright faces answered good at 0.88; dim: 40 % answered good at 0.64 (wrong),
    # 10 % answered dim at 0.72.
    assert lighting.labels == ("good", "dim")
    assert lighting.confusion == [[3, 0], [1, 1]]
    assert lighting.n == 5
    assert lighting.accuracy == pytest.approx(4 / 5)
    assert lighting.balanced_accuracy == pytest.approx((1 + 0.5) / 2)
    assert lighting.recall == {"good": 1.0, "dim": 0.5}
    # Bins [0.8, 0.9): 3 right at 0.88; [0.7, 0.8): 1 right at 0.72; [0.6, 0.7): 1 wrong at 0.64.
    assert lighting.ece == pytest.approx(3 / 5 * 0.12 + 1 / 5 * 0.28 + 1 / 5 * 0.64)
    assert [b["count"] for b in lighting.reliability] == [0, 0, 0, 0, 0, 0, 1, 1, 3, 0]
    # Margins 0.76 (x3), 0.44, 0.28 (the wrong one), at every threshold from 0 to 0.9.
    everyone, confident, sure = (1.0, pytest.approx(0.8)), (pytest.approx(0.8), 1.0), (0.6, 1.0)
    expected = {0.0: everyone, 0.05: everyone, 0.1: everyone, 0.15: everyone, 0.2: everyone}
    expected.update({0.3: confident, 0.4: confident, 0.5: sure, 0.6: sure, 0.7: sure})
    expected.update({0.8: (0.0, None), 0.9: (0.0, None)})
    assert [
        {"abstain_below": t, "coverage": pytest.approx(c), "accuracy": a}
        for t, (c, a) in expected.items()
    ] == lighting.coverage

    quality = report.result.attributes["image_quality"]
    # sharp: sideways (EXIF-rotated) and small at 0.9; blurry: blur-1.5 at 0.57, blur-5 at 0.95.
    assert quality.confusion == [[2, 0], [0, 2]]
    assert quality.accuracy == 1.0 and quality.balanced_accuracy == 1.0
    assert quality.ece == pytest.approx(2 / 4 * 0.1 + 1 / 4 * 0.43 + 1 / 4 * 0.05)
    top = quality.reliability[-1]  # the bin [0.9, 1.0] holds blur-5's 0.95
    assert top["low"] == 0.9 and top["high"] == 1.0 and top["count"] >= 1
    assert top["confidence"] >= 0.9

    assert report.images == 12  # 9 faces, coffee, broken.jpg and notes.txt
    assert model.encoded == 9 and model.batches == [3, 3, 3]  # never more than --batch-size
    assert report.no_face == ["lighting/good/coffee.jpg"]
    reasons = {item["path"]: item["reason"] for item in report.skipped}
    assert set(reasons) == {
        "README.txt",
        "gender/x/y.jpg",
        "lighting/neon/x.jpg",
        "lighting/dim/broken.jpg",
        "lighting/good/notes.txt",
    }
    assert "not in the attribute set" in reasons["gender/x/y.jpg"]
    assert "'neon' is not a label of lighting (good, dim)" in reasons["lighting/neon/x.jpg"]
    assert "image.corrupt" in reasons["lighting/dim/broken.jpg"]
    assert "image.unsupported_format" in reasons["lighting/good/notes.txt"]


def test_the_progress_bar_counts_images(labelled, capsys):
    samples, _ = evaluation.read_dataset(str(labelled / "image_quality"))  # no <attribute> level
    assert samples == []
    samples, _ = evaluation.read_dataset(str(labelled))
    evaluation.encode_samples(
        samples[:3], model=StubModel(), detector=HaarFaceDetector(), config=CONFIG, progress=True
    )
    assert "3/3" in capsys.readouterr().err


def test_a_csv_manifest_gives_the_same_figures(labelled, attribute_file, tmp_path):
    manifest = tmp_path / "manifest.csv"
    rows = [
        (str(path.relative_to(labelled)), *path.relative_to(labelled).parts[:2])
        for path in sorted(labelled.rglob("*.jpg"))
        if len(path.relative_to(labelled).parts) == 3
    ]
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "attribute", "label"])
        writer.writerows((str(labelled / p), a, label) for p, a, label in rows)
        writer.writerow(["missing.jpg", "lighting", "good"])
        writer.writerow(["", "lighting", ""])
    from_folder, _ = stub_report(labelled, attribute_file)
    from_csv, _ = stub_report(manifest, attribute_file)
    for name, result in from_folder.result.attributes.items():
        assert from_csv.result.attributes[name].to_json() == result.to_json()
    reasons = {item["path"]: item["reason"] for item in from_csv.skipped}
    assert reasons["missing.jpg"] == "unreadable file (No such file or directory)"
    assert reasons[f"manifest.csv:{len(rows) + 3}"] == "incomplete row"  # after header, missing


def test_a_manifest_without_its_columns_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\na.jpg,x\n")
    with pytest.raises(evaluation.DatasetError, match="missing: attribute, path"):
        evaluation.read_dataset(str(manifest))
    manifest.write_bytes(b"path,attribute,label\n\xff\xfe\x00photo.jpg,a,b\n")  # not UTF-8
    with pytest.raises(evaluation.DatasetError, match="not a CSV manifest"):
        evaluation.read_dataset(str(manifest))
    with pytest.raises(evaluation.DatasetError, match="neither a folder nor a CSV"):
        evaluation.read_dataset(str(tmp_path / "nowhere"))


def test_against_scores_both_sets_on_crops_encoded_once(labelled, attribute_file, tmp_path):
    other_file = tmp_path / "other.yaml"
    other_file.write_text(OTHER_PROMPTS_YAML.replace("      blurry:", "      soft:"))
    other_set = load_attribute_set(str(other_file))
    # The other set answers lighting the other way round: its accuracy is 1/5, not 4/5.
    other_embeddings = {"lighting": torch.eye(4)[[1, 0]], "image_quality": torch.eye(4)[2:]}
    report, model = stub_report(labelled, attribute_file, against=(other_set, other_embeddings))
    assert model.encoded == 9  # once, not once per set
    assert report.not_compared == {"image_quality": "the --against set has other labels"}
    assert set(report.against.attributes) == {"lighting"}
    assert report.against.attributes["lighting"].accuracy == pytest.approx(1 / 5)
    from faceapp.eval.report import difference

    assert difference(report.result, report.against)["lighting"]["accuracy"] == pytest.approx(
        1 / 5 - 4 / 5
    )


# -- pure metrics and calibration ---------------------------------------------------------------
def test_metrics_count_an_absent_label_out_of_balanced_accuracy():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1]])
    result = evaluation.attribute_metrics(np.array([0, 1, 1]), probs, ["a", "b", "c"])
    assert result.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert result.recall == {"a": 1.0, "b": 0.5, "c": None}
    assert result.balanced_accuracy == pytest.approx(0.75)
    assert evaluation.margins(probs).tolist() == pytest.approx([0.5, 0.3, 0.1])


def _overconfident(rng, n=600, k=3, right=0.7):
    truth = rng.integers(0, k, n)
    answer = np.where(rng.random(n) < right, truth, (truth + rng.integers(1, k, n)) % k)
    logits = 6.0 * np.eye(k)[answer] + rng.normal(0, 0.5, (n, k))
    return logits, truth


def test_the_fitted_temperature_lowers_ece_on_overconfident_answers():
    logits, truth = _overconfident(np.random.default_rng(0))
    before = evaluation.attribute_metrics(truth, evaluation.probabilities(logits, 1.0, 1.0), "abc")
    temperature = evaluation.fit_temperature(logits, truth)
    after = evaluation.attribute_metrics(
        truth, evaluation.probabilities(logits, 1.0, temperature), "abc"
    )
    assert temperature > 1.5  # answers right 70 % of the time at ~99 % need softening
    assert before.ece > 0.2
    assert after.ece < before.ece / 3
    assert after.accuracy == before.accuracy  # a temperature never changes the answer
    assert evaluation.nll(logits, truth, temperature) < evaluation.nll(logits, truth, 1.0)


@pytest.mark.parametrize("drawn_with", [2.5, 0.5])  # overconfident, and underconfident logits
def test_the_fit_finds_the_temperature_the_labels_were_drawn_with(drawn_with):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (4000, 4))
    z = logits / drawn_with
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(4, p=row) for row in probs])
    assert evaluation.fit_temperature(logits, truth) == pytest.approx(drawn_with, rel=0.1)


@pytest.mark.parametrize("labels", [1, 2, 3, 5])
def test_margins_are_the_services_margins(labels):
    probs = np.random.default_rng(labels).dirichlet(np.ones(labels), size=20)
    expected = [scoring.margin_of(row) for row in probs.tolist()]
    assert evaluation.margins(probs).tolist() == pytest.approx(expected)


def test_an_answer_at_exactly_the_margin_is_kept_as_the_service_keeps_it():
    margin = np.array([0.3, 0.2, 0.1])
    curve = {p["abstain_below"]: p for p in evaluation.coverage_curve(margin, np.ones(3, bool))}
    for threshold in (0.1, 0.2, 0.3):
        kept = [not scoring.answer([m, 0.0], ["a", "b"], threshold)["uncertain"] for m in margin]
        assert curve[threshold]["coverage"] == pytest.approx(sum(kept) / 3)


def test_confidence_bins_tile_zero_to_one():
    _, bins = evaluation.calibration_error(np.array([0.05, 0.55, 0.99]), np.ones(3, bool))
    assert bins[0]["low"] == 0.0 and bins[-1]["high"] == 1.0
    assert all(a["high"] == pytest.approx(b["low"]) for a, b in zip(bins, bins[1:], strict=False))
    assert [b["count"] for b in bins] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def test_throughput_is_images_per_second_of_the_run(labelled, attribute_file):
    report, _ = stub_report(labelled, attribute_file)
    assert dataclasses.replace(report, seconds=0.5).images_per_s == 2 * report.images
    assert dataclasses.replace(report, seconds=0.0).images_per_s == 0.0


# -- the CLI on the tiny random CLIP --------------------------------------------------------------
def test_eval_cli_end_to_end_writes_json_and_html(
    config, labelled, attribute_file, tmp_path, tiny_model_dir
):
    from faceapp import create_app

    app = create_app({**config, "ATTRIBUTES_FILE": str(attribute_file)})
    out_json, out_html = tmp_path / "eval.json", tmp_path / "eval.html"
    other = tmp_path / "other.yaml"
    other.write_text(OTHER_PROMPTS_YAML)
    result = app.test_cli_runner().invoke(
        args=[
            "eval",
            str(labelled),
            "--against",
            str(other),
            "--json",
            str(out_json),
            "--html",
            str(out_html),
            "--batch-size",
            "4",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "RANDOM WEIGHTS" in result.output and "no face 1, skipped 5" in result.output
    doc = json.loads(out_json.read_text())
    assert set(doc) == {
        "attributes",
        "images",
        "no_face",
        "skipped",
        "images_per_s",
        "model",
        "against",
        "difference",
    }
    assert set(doc["attributes"]) == {"lighting", "image_quality"}
    lighting = doc["attributes"]["lighting"]
    assert set(lighting) == {
        "n",
        "accuracy",
        "balanced_accuracy",
        "ece",
        "labels",
        "confusion",
        "coverage",
    }
    assert lighting["n"] == 5 and sum(map(sum, lighting["confusion"])) == 5
    assert doc["images"] == 12 and doc["no_face"] == 1 and len(doc["skipped"]) == 5
    assert doc["images_per_s"] > 0
    assert doc["model"]["random_weights"] is True
    assert doc["model"]["attributes_version"] == load_attribute_set(str(attribute_file)).digest
    assert set(doc["difference"]) == {"lighting", "image_quality"}
    page = out_html.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 6  # 3 plots x 2
    assert "lighting/good/coffee.jpg" in page and "gender/x/y.jpg" in page


def test_eval_cli_without_against_writes_exactly_the_issue_keys(
    runner, labelled, attribute_file, tmp_path
):
    out_json = tmp_path / "eval.json"
    result = runner.invoke(
        args=["eval", str(labelled), "--attributes", str(attribute_file), "--json", str(out_json)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out_json.read_text())
    assert set(doc) == {"attributes", "images", "no_face", "skipped", "images_per_s", "model"}


def test_eval_cli_errors_are_messages_not_tracebacks(runner, tmp_path, attribute_file):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = runner.invoke(args=["eval", str(bad), "--attributes", str(attribute_file)])
    assert result.exit_code == 1 and "needs the columns path, attribute, label" in result.output
    result = runner.invoke(args=["eval", str(tmp_path), "--fit"])
    assert result.exit_code == 2 and "does not write into the bundled" in result.output


def analyze_once(config, jpeg, attributes_file=None):
    """Analyse `jpeg` in a fresh app (with `attributes_file`): the answer, and the client."""
    if attributes_file:
        config = {**config, "ATTRIBUTES_FILE": str(attributes_file)}
    client = create_app(config).test_client()
    answer = client.post("/api/analyze", data={"file": (io.BytesIO(jpeg), "a.jpg")})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json(), client


def test_eval_fit_writes_temperatures_that_the_service_then_uses(
    config, tmp_path, astronaut_jpeg, labelled
):
    path = tmp_path / "attributes.yaml"
    shutil.copy(DEFAULT_FILE, path)
    original = path.read_text()
    before, _ = analyze_once(config, astronaut_jpeg, path)
    app = create_app({**config, "ATTRIBUTES_FILE": str(path)})
    result = app.test_cli_runner().invoke(args=["eval", str(labelled), "--fit"])
    assert result.exit_code == 0, result.output
    assert "Wrote temperatures into" in result.output
    assert "only 5 images: not a reliable fit" in result.output
    written = path.read_text()
    assert written.startswith(original.split("version: 1")[0])  # the header comments are kept
    assert "# Gender and ethnicity are deliberately absent" in written
    fitted = load_attribute_set(str(path))
    temperatures = {n: a.temperature for n, a in fitted.attributes.items() if a.temperature != 1}
    assert set(temperatures) == {"lighting", "image_quality"}  # the folder's attributes
    assert fitted.calibration_model == before["model"]["weights_version"]

    after, _ = analyze_once(config, astronaut_jpeg, path)
    assert after["model"]["attributes_version"] == fitted.digest
    assert after["model"]["attributes_version"] != before["model"]["attributes_version"]
    assert after["cached"] is False
    for name, temperature in temperatures.items():
        old = before["faces"][0]["attributes"][name]["scores"]
        new = after["faces"][0]["attributes"][name]["scores"]
        powered = {label: score ** (1 / temperature) for label, score in old.items()}
        expected = {label: value / sum(powered.values()) for label, value in powered.items()}
        # softmax(z / T) from softmax(z); the API rounds to 4 places and 1 / T amplifies that
        assert new == pytest.approx(expected, abs=1e-4 + 1e-4 / temperature), temperature
    untouched = before["faces"][0]["attributes"]["expression"]["scores"]
    assert after["faces"][0]["attributes"]["expression"]["scores"] == pytest.approx(untouched)

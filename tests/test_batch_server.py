"""``flask batch --server``: a real gunicorn with API keys and a low rate limit answers every
input, with the lines a local run gives."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageOps

from tests.conftest import jpeg_bytes
from tests.servers import app_env, gunicorn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("served")
    env = app_env(
        str(folder / "instance"),
        tiny_model_dir,
        API_KEYS="batch-key",
        RATELIMIT="2 per second",  # far below what 4 concurrent requests ask for: 429s
        DETECTOR="haar",
        URL_ALLOW_PRIVATE_NETWORKS="true",
        TORCH_THREADS="1",
        MAX_FACES="3",  # not this machine's default (5)
    )
    with gunicorn(env, workers=2, log_path=str(folder / "gunicorn.log")) as (base, _process):
        yield base


def _lines(path) -> dict[str, dict]:
    return {line["source"]: line for line in map(json.loads, path.read_text().splitlines())}


def test_every_input_is_answered_as_a_local_run_answers_it(
    served, config, tmp_path, httpserver, astronaut, coffee_jpeg, astronaut_jpeg
):
    from skimage import data

    from faceapp import create_app

    config["URL_ALLOW_PRIVATE_NETWORKS"] = True  # as the deployment: the loopback URL is fetched
    config["MAX_FACES"] = 3
    runner = create_app(config).test_cli_runner()

    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for index, image in enumerate([astronaut, Image.fromarray(data.chelsea())]):
        (root / f"{index}.jpg").write_bytes(jpeg_bytes(image))
        (root / "more" / f"{index}-mirrored.jpg").write_bytes(jpeg_bytes(ImageOps.mirror(image)))
    (root / "coffee.jpg").write_bytes(coffee_jpeg)
    (root / "more" / "cut.jpg").write_bytes(astronaut_jpeg[:2500])
    httpserver.expect_request("/remote.jpg").respond_with_data(
        astronaut_jpeg, content_type="image/jpeg"
    )
    url = httpserver.url_for("/remote.jpg")
    listing = tmp_path / "urls.txt"
    listing.write_text(url + "\n")

    remote = tmp_path / "remote.jsonl"
    args = ["batch", str(root), str(listing), "--labels", "a smiling person,a sad person"]
    result = runner.invoke(
        args=[*args, "--out", str(remote), "--server", served, "--api-key", "batch-key"]
        + ["--concurrency", "4"]
    )
    assert result.exit_code == 0, result.output
    retried = int(result.output.split(" requests sent again")[0].rsplit("\n", 1)[-1])
    assert retried > 0, result.output  # the rate limit was hit, and waited out

    local = tmp_path / "local.jsonl"
    assert runner.invoke(args=[*args, "--out", str(local)]).exit_code == 0
    remote_lines, local_lines = _lines(remote), _lines(local)
    assert set(remote_lines) == set(local_lines) and len(remote_lines) == 7
    assert remote_lines[url]["valid"] is True
    for source, line in remote_lines.items():
        expected = local_lines[source]
        assert line.keys() == expected.keys(), source
        assert line["image_id"] == expected["image_id"]
        if "error" in line:
            assert line["error"]["code"] == expected["error"]["code"]
            continue
        assert (line["valid"], line["errors"]) == (expected["valid"], expected["errors"])
        assert len(line["faces"]) == len(expected["faces"])
        for face, other in zip(line["faces"], expected["faces"], strict=True):
            assert face["box"] == other["box"]
            for name, answer in face["attributes"].items():
                assert answer["scores"] == pytest.approx(
                    other["attributes"][name]["scores"], abs=2e-3
                )
            assert face["labels"] == pytest.approx(other["labels"], abs=2e-3)
        assert line["model"]["version"] == expected["model"]["version"]
        assert line["face_count"] == expected["face_count"], source


def test_a_wrong_key_stops_before_anything_is_written(served, runner, tmp_path, astronaut_jpeg):
    (tmp_path / "a.jpg").write_bytes(astronaut_jpeg)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        args=["batch", str(tmp_path / "a.jpg"), "--out", str(out), "--server", served]
        + ["--api-key", "wrong"]
    )
    assert result.exit_code == 1 and "key" in result.output
    assert not out.exists()


def test_a_line_not_analysed_gives_the_deployments_max_faces(served, runner, tmp_path, coffee_jpeg):
    """An invalid photo (no face), not forced: its face_count.max_faces is the deployment's
    MAX_FACES (3), not this machine's (5), or the --max-faces given."""
    (tmp_path / "coffee.jpg").write_bytes(coffee_jpeg)
    for extra, expected in (([], 3), (["--max-faces", "2"], 2)):
        out = tmp_path / f"out{expected}.jsonl"
        result = runner.invoke(
            args=["batch", str(tmp_path / "coffee.jpg"), "--out", str(out), "--server", served]
            + ["--api-key", "batch-key", *extra]
        )
        assert result.exit_code == 0, result.output
        (line,) = map(json.loads, out.read_text().splitlines())
        assert line["valid"] is False and line["faces"] == []
        assert line["face_count"] == {"found": 0, "not_analysed": 0, "max_faces": expected}

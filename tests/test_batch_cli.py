"""``flask batch``: folders, lists, CSV output, resume after SIGINT, URLs, usage errors.

Real photos from scikit-image and variants of them, broken files among them; the SIGINT test
runs the real command in a subprocess.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image, ImageOps

from tests.conftest import jpeg_bytes
from tests.servers import ROOT, wait_until

SKIMAGE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry")


def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def variants() -> list[bytes]:
    """Distinct real photos: skimage's, mirrored, shrunk, recompressed (distinct bytes each)."""
    found = []
    for name in SKIMAGE_PHOTOS:
        image = _photo(name)
        found.append(jpeg_bytes(image))
        found.append(jpeg_bytes(ImageOps.mirror(image)))
        found.append(jpeg_bytes(image.resize((image.width // 2, image.height // 2))))
    return found


@pytest.fixture
def folder(tmp_path, astronaut_jpeg, coffee_jpeg) -> tuple[str, dict[str, tuple[str, str]]]:
    """Nested folders of real photos and broken files; expected (image_id, code) per input."""
    root = tmp_path / "photos"
    (root / "trip" / "day 2").mkdir(parents=True)
    (root / ".hidden").mkdir()
    expected: dict[str, tuple[str | None, str]] = {}

    def put(relative: str, data: bytes, code: str) -> None:
        path = root / relative
        path.write_bytes(data)
        expected[str(path)] = (_sha(data), code)

    put("astronaut.jpg", astronaut_jpeg, "valid")
    put("coffee.jpg", coffee_jpeg, "face.none")
    png = _photo("astronaut")
    buffer = io.BytesIO()
    png.save(buffer, "PNG")
    put("trip/astronaut.png", buffer.getvalue(), "valid")
    put("trip/chelsea-without-extension", jpeg_bytes(_photo("chelsea")), "face.none")
    put("trip/day 2/cut.jpg", astronaut_jpeg[:3000], "image.corrupt")
    put("trip/day 2/empty.jpg", b"", "image.empty")
    put("trip/day 2/notes.jpg", b"not a photo at all\n", "image.unsupported_format")
    # Not inputs: a text file (by content and name), hidden files and folders.
    (root / "trip" / "README.txt").write_text("holiday photos\n")
    (root / ".hidden" / "a.jpg").write_bytes(astronaut_jpeg)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return str(root), expected


def _lines(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert text == "" or text.endswith("\n"), "the output ends in a half line"
    return [json.loads(line) for line in text.splitlines()]


def _code(line: dict) -> str:
    if "error" in line:
        return line["error"]["code"]
    return "valid" if line["valid"] else line["errors"][0]["code"]


def test_a_folder_gives_exactly_one_line_per_input(runner, folder, tmp_path):
    root, expected = folder
    out = tmp_path / "out.jsonl"
    result = runner.invoke(args=["batch", root, "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = _lines(out)
    assert sorted(line["source"] for line in lines) == sorted(expected)
    for line in lines:
        image_id, code = expected[line["source"]]
        assert (line["image_id"], _code(line)) == (image_id, code), line
        if code == "valid":
            assert set(line) == {
                "source",
                "image_id",
                "valid",
                "errors",
                "warnings",
                "faces",
                "face_count",
                "model",
            }
            assert len(line["faces"]) == 1 and line["faces"][0]["attributes"]
    assert "7 images" in result.output
    assert "invalid  2 (face.none 2)" in result.output
    assert "failed   3" in result.output and "image.corrupt 1" in result.output
    assert "1 not images" in result.output  # README.txt; hidden files are not counted

    again = runner.invoke(args=["batch", root, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert _lines(out) == lines  # nothing rewritten, nothing doubled
    assert "7 answered already" in again.output


def test_the_default_threads_prepare_a_second_batch_while_one_is_encoded(
    runner, folder, tmp_path, monkeypatch
):
    """One inference thread per core, and without --workers a batch's worth of pool threads
    for each of them and one more, plus one per core; --workers wins."""
    from faceapp.batch import runner as batch_runner
    from faceapp.engine import engine
    from faceapp.face_models import available_cores

    seen = []
    real_run = batch_runner.run
    monkeypatch.setattr(
        batch_runner, "run", lambda *a, **kw: seen.append(kw["workers"]) or real_run(*a, **kw)
    )
    root, _ = folder
    max_batch = runner.app.config["INFERENCE_MAX_BATCH"]
    for extra in ([], ["--workers", "3"]):
        out = tmp_path / f"out{len(extra)}.jsonl"
        result = runner.invoke(args=["batch", root, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
    cores = available_cores()
    assert seen == [(cores + 1) * max_batch + cores, 3]
    assert runner.app.config["INFERENCE_THREADS"] == cores
    assert engine.get(runner.app).threads == cores


def test_a_set_inference_or_torch_thread_count_is_left_as_it_is(monkeypatch):
    from faceapp import face_models
    from faceapp.batch.pipeline import use_the_cores
    from faceapp.face_models import available_cores

    for given, expected in (
        ({"INFERENCE_THREADS": 1}, 1),
        ({"INFERENCE_THREADS": None, "TORCH_THREADS": 2}, max(1, available_cores() // 2)),
        ({"INFERENCE_THREADS": None, "TORCH_THREADS": 0}, available_cores()),
        ({"INFERENCE_THREADS": None, "DEVICE": "cpu"}, available_cores()),
    ):
        settings = dict(given)
        use_the_cores(settings)
        assert settings["INFERENCE_THREADS"] == expected
    # A GPU is fed by one thread, however many cores there are.
    monkeypatch.setattr(face_models, "choose_device", lambda requested: "cuda")
    settings = {"INFERENCE_THREADS": None, "DEVICE": "auto"}
    use_the_cores(settings)
    assert settings["INFERENCE_THREADS"] == 1


def test_lists_and_csvs_of_paths_and_a_listed_input_given_twice(runner, folder, tmp_path):
    root, expected = folder
    paths = sorted(expected)
    listing = tmp_path / "list.txt"
    listing.write_text("# my photos\n\n" + "\n".join(paths[:4]) + "\n" + paths[0] + "\n")
    table = tmp_path / "table.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path"])
        writer.writerows([[i, path] for i, path in enumerate(paths[3:])])
    out = tmp_path / "out.jsonl"
    result = runner.invoke(args=["batch", str(listing), str(table), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = _lines(out)
    assert sorted(line["source"] for line in lines) == paths  # each input once
    assert "2 answered already" in result.output  # paths[0] twice, paths[3] in both


def test_csv_output_reads_back_with_the_csv_module(runner, folder, tmp_path):
    root, expected = folder
    out = tmp_path / "out.csv"
    args = ["batch", root, "--out", str(out), "--labels", "a smiling person, a sad person"]
    result = runner.invoke(args=[*args, "--attributes", "expression,age_group"])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "source",
        "image_id",
        "valid",
        "errors",
        "warnings",
        "faces_found",
        "faces_not_analysed",
        "max_faces",
        "face",
        "box_x",
        "box_y",
        "box_width",
        "box_height",
        "confidence",
        "expression",
        "expression_score",
        "age_group",
        "age_group_score",
        "label:a smiling person",
        "label:a sad person",
    ]
    assert sorted(row["source"] for row in rows) == sorted(expected)  # one face or none each
    for row in rows:
        image_id, code = expected[row["source"]]
        assert row["image_id"] == image_id
        counts = (row["faces_found"], row["faces_not_analysed"], row["max_faces"])
        if code == "valid":
            assert row["valid"] == "true" and row["face"] == "0"
            assert row["expression"] and 0 < float(row["expression_score"]) <= 1
            assert 0 < float(row["label:a smiling person"]) < 1
            assert counts == ("1", "0", "5")
        elif code.startswith("face."):
            assert (row["valid"], row["errors"], row["face"]) == ("false", code, "")
            assert counts == ("0", "0", "5")
        else:
            assert (row["valid"], row["errors"]) == ("", code) and counts == ("", "", "")

    # Resuming with other columns would mix two tables: refused, the file untouched.
    before = out.read_bytes()
    other = runner.invoke(args=["batch", root, "--out", str(out)])
    assert other.exit_code == 2 and "other columns" in other.output
    assert out.read_bytes() == before


def test_a_csv_written_before_the_face_count_columns_resumes_in_its_own_columns(
    runner, folder, tmp_path
):
    """An earlier version's CSV (no faces_found / faces_not_analysed / max_faces) is resumed, not
    refused: its header stays, and the new rows have its columns."""
    root, expected = folder
    out = tmp_path / "out.csv"
    header = "source,image_id,valid,errors,warnings,face,box_x,box_y,box_width,box_height,"
    header += "confidence,expression,expression_score"
    astronaut = os.path.join(root, "astronaut.jpg")
    old_row = f"{astronaut},{expected[astronaut][0]},true,,,0,178,67,93,93,0.98,happy,0.2"
    out.write_text(f"{header}\n{old_row}\n")
    result = runner.invoke(args=["batch", root, "--out", str(out), "--attributes", "expression"])
    assert result.exit_code == 0, result.output
    assert "1 answered already" in result.output
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert ",".join(rows[0]) == header and ",".join(rows[1]) == old_row
    assert all(len(row) == len(rows[0]) for row in rows)
    assert sorted(row[0] for row in rows[1:]) == sorted(expected)


def test_a_partial_last_line_is_cut_off_and_its_input_answered_again(runner, folder, tmp_path):
    root, expected = folder
    out = tmp_path / "out.jsonl"
    assert runner.invoke(args=["batch", root, "--out", str(out)]).exit_code == 0
    whole = out.read_text().splitlines(keepends=True)
    out.write_text("".join(whole[:3]) + whole[3][:40])  # as a kill in mid-write leaves it
    result = runner.invoke(args=["batch", root, "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = _lines(out)
    assert sorted(line["source"] for line in lines) == sorted(expected)
    assert out.read_text().startswith("".join(whole[:3]))  # the whole lines were not rewritten


def test_overwrite_starts_over(runner, folder, tmp_path):
    root, expected = folder
    out = tmp_path / "out.jsonl"
    out.write_text('{"source": "old"}\n')
    result = runner.invoke(args=["batch", root, "--out", str(out), "--overwrite", "--progress"])
    assert result.exit_code == 0, result.output
    assert "img/s" in result.output or "it/s" in result.output or "img" in result.output  # tqdm
    assert sorted(line["source"] for line in _lines(out)) == sorted(expected)


@pytest.mark.parametrize(
    "args",
    [
        ["--attributes", "no-such-attribute"],
        ["--labels", "a cat,A CAT"],
        ["--max-faces", "0"],
        ["--format", "xml"],
        ["--no-such-option"],
        ["--server", "http://127.0.0.1:9", "--attributes-file", __file__],
    ],
)
def test_a_bad_option_is_a_usage_error_and_the_output_is_untouched(runner, folder, tmp_path, args):
    root, _ = folder
    out = tmp_path / "out.jsonl"
    out.write_text('{"source":"kept"}\n{"sour')  # even its partial line stays as it is
    result = runner.invoke(args=["batch", root, "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert out.read_text() == '{"source":"kept"}\n{"sour'


@pytest.mark.parametrize("bad", ["missing-folder", "missing-out-folder/out.jsonl", "no-column"])
def test_a_missing_source_or_output_folder_is_a_usage_error(runner, folder, tmp_path, bad):
    root, _ = folder
    out = tmp_path / "out.jsonl"
    sources = [root]
    if bad == "missing-folder":
        sources.append(str(tmp_path / "nope"))
    elif bad == "no-column":
        (tmp_path / "t.csv").write_text("name,size\na.jpg,1\n")
        sources.append(str(tmp_path / "t.csv"))
    else:
        out = tmp_path / bad
    result = runner.invoke(args=["batch", *sources, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert not out.exists()
    no_source = runner.invoke(args=["batch", "--out", str(out)])
    assert no_source.exit_code == 2 and not out.exists()


def test_urls_go_through_the_fetch_rules(config, httpserver, tmp_path, astronaut_jpeg):
    from faceapp import create_app

    httpserver.expect_request("/a.jpg").respond_with_data(astronaut_jpeg, content_type="image/jpeg")
    httpserver.expect_request("/page.html").respond_with_data(
        "<html></html>", content_type="text/html"
    )
    httpserver.expect_request("/gone.jpg").respond_with_data("", status=404)
    urls = [httpserver.url_for(path) for path in ("/a.jpg", "/page.html", "/gone.jpg")]
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(urls) + "\nftp://example.com/a.jpg\n")

    out = tmp_path / "refused.jsonl"
    result = (
        create_app(config).test_cli_runner().invoke(args=["batch", str(listing), "--out", str(out)])
    )
    assert result.exit_code == 0, result.output
    by_source = {line["source"]: line for line in _lines(out)}
    for url in urls:  # a private address (the loopback server) is refused
        assert by_source[url]["error"]["code"] == "url.forbidden"
    assert by_source["ftp://example.com/a.jpg"]["error"]["code"] == "url.invalid"

    config["URL_ALLOW_PRIVATE_NETWORKS"] = True
    out = tmp_path / "fetched.jsonl"
    result = (
        create_app(config).test_cli_runner().invoke(args=["batch", str(listing), "--out", str(out)])
    )
    assert result.exit_code == 0, result.output
    by_source = {line["source"]: line for line in _lines(out)}
    assert by_source[urls[0]]["valid"] is True
    assert by_source[urls[0]]["image_id"] == _sha(astronaut_jpeg)
    assert by_source[urls[1]]["error"]["code"] == "url.not_image"
    assert by_source[urls[2]]["error"]["code"] == "url.bad_status"


def _batch_process(args, env, log):
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "batch", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _interrupt(args, env, out, log_path, signum, after_lines: int) -> tuple[int, str]:
    """Run the command, send `signum` once `after_lines` lines are out; its exit code and log."""
    with open(log_path, "wb") as log:
        process = _batch_process(args, env, log)
        try:
            wait_until(
                lambda: (
                    out.exists()
                    and out.read_bytes().count(b"\n") >= after_lines
                    or process.poll() is not None
                ),
                600,  # a bound, not a timing: the command starts slowly on a busy machine
                f"{after_lines} lines written",
            )
            process.send_signal(signum)
            code = process.wait(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return code, log_path.read_text()


def test_sigint_then_sigterm_mid_run_then_resume_answers_every_input_once(
    tmp_path, tiny_model_dir, variants
):
    root = tmp_path / "many"
    expected = {}
    for index in range(40):
        data = variants[index % len(variants)]
        if index >= len(variants):  # more distinct photos: rotated copies
            data = jpeg_bytes(Image.open(io.BytesIO(data)).rotate(index, expand=True))
        path = root / f"part{index % 3}" / f"photo-{index:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[str(path)] = _sha(data)
    out = tmp_path / "out.jsonl"
    env = {
        **os.environ,
        "FACEAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "FACEAPP_MODEL_NAME": tiny_model_dir,
        "FACEAPP_MODEL_AUTO_PULL": "false",
        "FACEAPP_DETECTOR": "haar",
        "FACEAPP_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    args = [str(root), "--out", str(out), "--workers", "1", "--no-progress"]

    code, first = _interrupt(args, env, out, tmp_path / "first.log", signal.SIGINT, 3)
    assert code == 130, first
    assert "SIGINT: finishing the inputs in flight" in first
    assert "Stopped (SIGINT)" in first and "Run the same command again" in first
    answered = _lines(out)
    assert 3 <= len(answered) < len(expected), first

    after = len(answered) + 3
    code, second = _interrupt(args, env, out, tmp_path / "second.log", signal.SIGTERM, after)
    assert code == 143, second
    assert "Stopped (SIGTERM)" in second
    assert f"{len(answered)} answered already" in second
    resumed = _lines(out)
    assert resumed[: len(answered)] == answered and len(resumed) < len(expected)

    with open(tmp_path / "third.log", "wb") as log:
        assert _batch_process(args, env, log).wait(timeout=900) == 0
    third = (tmp_path / "third.log").read_text()
    lines = _lines(out)
    assert lines[: len(resumed)] == resumed  # the earlier runs' lines, untouched
    assert sorted(line["source"] for line in lines) == sorted(expected)  # each input once
    assert all(line["image_id"] == expected[line["source"]] for line in lines)
    assert f"{len(resumed)} answered already" in third


def test_progress_off_a_terminal_is_a_line_with_the_counts_and_the_eta(monkeypatch):
    from faceapp.batch import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    stream = io.StringIO()
    tally = progress.Tally()
    report = progress.Progress(tally, stream=stream)
    report.set_total(10)
    for line in (
        {"valid": True, "faces": [{}], "errors": []},
        {"valid": False, "faces": [], "errors": [{"code": "face.none"}]},
        {"error": {"code": "image.corrupt", "message": "x"}},
    ):
        tally.add(line)
        report.update(line)
    report.close()
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("batch: 3 images, 1 faces, 1 invalid, 1 failed, ")
    assert "3/10, ETA 0:" in last
    summary = tally.summary()
    assert "invalid  1 (face.none 1)" in summary and "failed   1 (image.corrupt 1)" in summary

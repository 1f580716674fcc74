"""Settings mean what they say: every FACEAPP_ value is converted once, by its declared type.

The severe case: ``FACEAPP_URL_ALLOW_PRIVATE_NETWORKS=False`` used to reach the app as the
non-empty (true) string 'False', which turned the SSRF guard off.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from faceapp import create_app
from faceapp.config import SettingError, check_settings, convert
from tests.servers import ROOT, app_env, gunicorn

FALSE_SPELLINGS = ["False", "false", "FALSE", "no", "No", "off", "OFF", "0", " no "]
TRUE_SPELLINGS = ["True", "true", "yes", "YES", "on", "On", "1"]
BOOLEANS = ["URL_ALLOW_PRIVATE_NETWORKS", "METRICS_ENABLED", "TESTER_ENABLED", "RATELIMIT_ENABLED"]


@pytest.fixture
def env_app(tmp_path, monkeypatch, tiny_model_dir):
    """create_app() as a server makes it (no test mapping), from FACEAPP_ variables alone."""
    for name in list(os.environ):
        if name.startswith("FACEAPP_"):
            monkeypatch.delenv(name)
    for name, value in app_env(str(tmp_path / "instance"), tiny_model_dir).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FACEAPP_LOAD_MODEL_ON_START", "0")

    def make(**settings: str):
        for key, value in settings.items():
            monkeypatch.setenv(f"FACEAPP_{key}", value)
        return create_app()

    return make


@pytest.mark.parametrize("key", BOOLEANS)
@pytest.mark.parametrize("spelling", FALSE_SPELLINGS)
def test_every_false_spelling_is_false(env_app, key, spelling):
    assert env_app(**{key: spelling}).config[key] is False


@pytest.mark.parametrize("key", BOOLEANS)
@pytest.mark.parametrize("spelling", TRUE_SPELLINGS)
def test_every_true_spelling_is_true(env_app, key, spelling):
    assert env_app(**{key: spelling}).config[key] is True


def test_private_networks_false_keeps_the_ssrf_guard_on(env_app, httpserver, astronaut_jpeg):
    httpserver.expect_request("/a.jpg").respond_with_data(astronaut_jpeg, content_type="image/jpeg")
    app = env_app(URL_ALLOW_PRIVATE_NETWORKS="False")
    answer = app.test_client().post(
        "/api/validate", json={"image_url": httpserver.url_for("/a.jpg")}
    )
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["error"]["code"] == "url.forbidden"
    assert len(httpserver.log) == 0  # no connection was made


def test_metrics_and_tester_off_when_spelled_no(env_app):
    client = env_app(METRICS_ENABLED="no", TESTER_ENABLED="False").test_client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/app/login").status_code == 404


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("MAX_UPLOAD_BYTES", "1000", 1000),
        ("MAX_UPLOAD_BYTES", " 2_000 ", 2000),
        ("URL_DEADLINE", "2.5", 2.5),
        ("URL_DEADLINE", "7", 7.0),
        ("API_KEYS", "a, b,,c ", ["a", "b", "c"]),
        ("API_KEYS", "", []),
        ("TESTER_ENABLED", "", False),  # empty: unset, so off outside development
        ("YUNET_SCORE_THRESHOLD", "0.8", 0.8),
        ("YUNET_SCORE_THRESHOLD", "", None),
        ("SECRET_KEY", "1234567890" * 4, "1234567890" * 4),  # text, though JSON sees a number
        ("LOG_LEVEL", "debug", "DEBUG"),
        ("SESSION_COOKIE_SECURE", "off", False),  # Flask's own settings are typed too
    ],
)
def test_values_are_converted_by_type(env_app, key, raw, value):
    got = env_app(**{key: raw}).config[key]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("METRICS_ENABLED", "maybe", "FACEAPP_METRICS_ENABLED: 'maybe' is not a yes/no value"),
        ("MAX_UPLOAD_BYTES", "ten", "FACEAPP_MAX_UPLOAD_BYTES: 'ten' is not a whole number"),
        ("MAX_UPLOAD_BYTES", "1.5", "FACEAPP_MAX_UPLOAD_BYTES: '1.5' is not a whole number"),
        ("MAX_UPLOAD_BYTES", "-1", "FACEAPP_MAX_UPLOAD_BYTES: -1 must be above 0"),
        ("URL_DEADLINE", "soon", "FACEAPP_URL_DEADLINE: 'soon' is not a number"),
        ("URL_DEADLINE", "inf", "FACEAPP_URL_DEADLINE: 'inf' is not a number"),
        ("URL_DEADLINE", "nan", "FACEAPP_URL_DEADLINE: 'nan' is not a number"),
        ("HEADER_TIMEOUT", "-2", "FACEAPP_HEADER_TIMEOUT: -2.0 must be above 0"),
        ("DECODE_MEMORY_BUDGET", "0", "FACEAPP_DECODE_MEMORY_BUDGET: 0 must be above 0"),
        ("MAX_FACES", "0", "FACEAPP_MAX_FACES: 0 must be above 0"),
        ("TRUSTED_PROXY_HOPS", "-1", "FACEAPP_TRUSTED_PROXY_HOPS: -1 is below 0"),
        ("LOG_LEVEL", "loud", "FACEAPP_LOG_LEVEL: 'loud' is not one of DEBUG, INFO"),
    ],
)
def test_a_bad_value_names_its_key(env_app, key, raw, message):
    with pytest.raises(SystemExit) as stopped:
        env_app(**{key: raw})
    assert str(stopped.value.code).startswith("Error: " + message)


def test_instance_file_values_are_converted_too(env_app, tmp_path):
    (tmp_path / "instance").mkdir(exist_ok=True)
    (tmp_path / "instance" / "config.py").write_text(
        'URL_ALLOW_PRIVATE_NETWORKS = "off"\nMAX_FACES = "3"\nADMIN_KEYS = ["k1", " k2 "]\n'
    )
    config = env_app().config
    assert config["URL_ALLOW_PRIVATE_NETWORKS"] is False
    assert config["MAX_FACES"] == 3
    assert config["ADMIN_KEYS"] == ["k1", "k2"]


def test_the_environment_overrides_the_instance_file(env_app, tmp_path):
    (tmp_path / "instance").mkdir(exist_ok=True)
    (tmp_path / "instance" / "config.py").write_text("METRICS_ENABLED = True\n")
    assert env_app(METRICS_ENABLED="off").config["METRICS_ENABLED"] is False


def test_test_mappings_are_converted_and_checked(config):
    assert (
        create_app({**config, "URL_ALLOW_PRIVATE_NETWORKS": "no"}).config[
            "URL_ALLOW_PRIVATE_NETWORKS"
        ]
        is False
    )
    with pytest.raises(SettingError, match="MAX_FACES: 'many' is not a whole number"):
        create_app({**config, "MAX_FACES": "many"})


def test_the_check_before_forking_reads_the_instance_folders_config_py(tmp_path):
    (tmp_path / "config.py").write_text('MAX_FACES = "many"\n', encoding="utf-8")
    with pytest.raises(SettingError, match="MAX_FACES: 'many' is not a whole number"):
        check_settings(str(tmp_path))


@pytest.mark.parametrize(("value", "kind"), [(True, int), (1.5, int), (True, float), (3, str)])
def test_convert_refuses_what_is_not_of_its_type(value, kind):
    with pytest.raises(SettingError, match="^KEY: "):
        convert("KEY", value, kind)


def test_a_required_setting_cannot_be_none():
    with pytest.raises(SettingError, match="MAX_FACES: needs a value"):
        convert("MAX_FACES", None, int)


def _one_line_error(result: subprocess.CompletedProcess, line: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert line in result.stderr.splitlines(), result.stderr


def test_the_cli_stops_in_one_line(tmp_path, tiny_model_dir):
    env = {
        **os.environ,
        **app_env(str(tmp_path), tiny_model_dir),
        "FACEAPP_METRICS_ENABLED": "maybe",
    }
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    result = subprocess.run(
        [flask, "--app", "wsgi", "models", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _one_line_error(
        result,
        "Error: FACEAPP_METRICS_ENABLED: 'maybe' is not a yes/no value"
        " (true/false, yes/no, on/off, 1/0)",
    )


def _gunicorn_run(env: dict[str, str]) -> subprocess.CompletedProcess:
    gunicorn_bin = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    return subprocess.run(
        [gunicorn_bin, "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env={**os.environ, "PORT": "0", "PRELOAD_LIBRARIES": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "raw", "line"),
    [
        (
            "FACEAPP_URL_ALLOW_PRIVATE_NETWORKS",
            "perhaps",
            "Error: FACEAPP_URL_ALLOW_PRIVATE_NETWORKS: 'perhaps' is not a yes/no value"
            " (true/false, yes/no, on/off, 1/0)",
        ),
        ("FACEAPP_HEADER_TIMEOUT", "5s", "Error: FACEAPP_HEADER_TIMEOUT: '5s' is not a number"),
        ("THREADS", "eight", "Error: THREADS: 'eight' is not a whole number"),
        ("WORKERS", "0", "Error: WORKERS: '0' is below 1"),
        (
            "PRELOAD_LIBRARIES",
            "maybe",
            "Error: PRELOAD_LIBRARIES: 'maybe' is not a yes/no value"
            " (true/false, yes/no, on/off, 1/0)",
        ),
    ],
)
def test_gunicorn_stops_in_one_line_before_any_worker(tmp_path, tiny_model_dir, name, raw, line):
    result = _gunicorn_run({**app_env(str(tmp_path), tiny_model_dir), name: raw})
    _one_line_error(result, line)
    assert "Booting worker" not in result.stderr


@pytest.mark.parametrize("spelling", ["False", "no", "off"])
def test_gunicorn_reads_each_false_spelling_as_false(
    tmp_path, tiny_model_dir, httpserver, astronaut_jpeg, spelling
):
    httpserver.expect_request("/a.jpg").respond_with_data(astronaut_jpeg, content_type="image/jpeg")
    env = app_env(
        str(tmp_path),
        tiny_model_dir,
        URL_ALLOW_PRIVATE_NETWORKS=spelling,
        METRICS_ENABLED=spelling,
        TESTER_ENABLED=spelling,
        LOAD_MODEL_ON_START="0",
    )
    with gunicorn({**env, "PRELOAD_LIBRARIES": "0"}, workers=1) as (base, _):
        url = httpserver.url_for("/a.jpg")
        answer = requests.post(base + "/api/validate", json={"image_url": url}, timeout=30)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "url.forbidden"
        assert requests.get(base + "/metrics", timeout=10).status_code == 404
        assert requests.get(base + "/app/login", timeout=10).status_code == 404
    assert len(httpserver.log) == 0


def test_gunicorn_reads_a_true_spelling_as_true(
    tmp_path, tiny_model_dir, httpserver, astronaut_jpeg
):
    """The counterpart: the same start with "yes" fetches from loopback and serves the pages."""
    httpserver.expect_request("/a.jpg").respond_with_data(astronaut_jpeg, content_type="image/jpeg")
    env = app_env(
        str(tmp_path),
        tiny_model_dir,
        URL_ALLOW_PRIVATE_NETWORKS="yes",
        METRICS_ENABLED="On",
        TESTER_ENABLED="YES",
        LOAD_MODEL_ON_START="0",
        DETECTOR="haar",
    )
    with gunicorn({**env, "PRELOAD_LIBRARIES": "0"}, workers=1) as (base, _):
        url = httpserver.url_for("/a.jpg")
        answer = requests.post(base + "/api/validate", json={"image_url": url}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert requests.get(base + "/metrics", timeout=10).status_code == 200
        assert requests.get(base + "/app/login", timeout=10).status_code == 200
    assert len(httpserver.log) == 1

"""deploy/: nginx config, systemd unit, Redis sample, scrape config and Grafana dashboard."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess

import pytest
import redis
import requests
from ruamel.yaml import YAML

from faceapp import create_app
from tests.conftest import ADMIN
from tests.servers import (
    ROOT,
    app_env,
    free_port,
    gunicorn,
    nginx,
    nginx_binary,
    wait_until,
    write_nginx_config,
)

DEPLOY = os.path.join(ROOT, "deploy")


def test_nginx_accepts_the_config(tmp_path):
    conf = write_nginx_config("127.0.0.1:8000", str(tmp_path), free_port())
    result = subprocess.run(
        [nginx_binary(), "-t", "-c", conf, "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


@pytest.mark.parametrize("name", ["faceapp.service", "faceapp-worker.service"])
def test_systemd_accepts_the_unit(tmp_path, name):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (no systemd): the unit is unchecked")
    # The unit names /srv/faceapp; verify checks that ExecStart's program exists, so point it at
    # this checkout (whose .venv has gunicorn and flask).
    with open(os.path.join(DEPLOY, name), encoding="utf-8") as fh:
        unit = fh.read().replace("/srv/faceapp", ROOT)
    path = tmp_path / name
    path.write_text(unit, encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    # Unknown keys and bad values are only warnings (exit 0): any line about the unit fails.
    about_unit = [line for line in result.stderr.splitlines() if name in line]
    assert result.returncode == 0 and about_unit == [], result.stderr
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit


def test_the_redis_sample_runs_and_never_evicts(tmp_path):
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    process = subprocess.Popen(
        # The sample as it is, but on a free loopback port and a scratch folder.
        [
            binary,
            os.path.join(DEPLOY, "redis-faceapp.conf"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password="change-me-to-a-long-random-password")

        def answers() -> bool:
            assert process.poll() is None, "redis-server refused the sample configuration"
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_until(answers, 10, "redis-server with the sample answering")
        config = client.config_get("*")
        assert config["maxmemory-policy"] == "noeviction"
        assert int(config["maxmemory"]) == 4 * 1024**3
        # Snapshots and the append-only file, fsynced each second: jobs' queue and results
        # survive a restart (README.md, "Several hosts").
        assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
        assert config["save"]
        with pytest.raises(redis.ResponseError):
            client.execute_command("FLUSHALL")  # disabled
        anonymous = redis.Redis(port=port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_scrape_config_and_dashboard_use_metrics_the_service_has(config, astronaut_jpeg, redis_url):
    with open(os.path.join(DEPLOY, "prometheus-faceapp.yml"), encoding="utf-8") as fh:
        scrape = YAML(typ="safe", pure=True).load(fh)
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"

    config["METRICS_ENABLED"] = True
    config["BROKER_URL"] = redis_url.rsplit("/", 1)[0] + "/3"  # jobs on: their figures too
    client = create_app(config).test_client()
    client.post("/api/validate", json={"image_base64": base64.b64encode(astronaut_jpeg).decode()})
    text = client.get("/metrics", headers=ADMIN).get_data(as_text=True)
    families = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    exposed = families | {f + "_total" for f in families}
    for suffix in ("_bucket", "_count", "_sum"):
        exposed |= {f + suffix for f in families}

    with open(os.path.join(DEPLOY, "grafana-faceapp.json"), encoding="utf-8") as fh:
        dashboard = json.load(fh)
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bfaceapp_\w+", target["expr"])
    }
    assert used and used <= exposed, used - exposed
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    documented = set(re.findall(r"`(faceapp_\w+)`", readme))
    assert families - {"faceapp_build_info"} <= documented | {
        f.removesuffix("_total") for f in documented
    }, "metrics missing from README.md, Metrics"


@pytest.mark.slow
def test_nginx_keeps_metrics_internal(tmp_path, tiny_model_dir):
    env = app_env(
        str(tmp_path / "instance"),
        tiny_model_dir,
        LOAD_MODEL_ON_START="false",
        ADMIN_KEYS="admin-key",
        METRICS_ENABLED="true",
    )
    with gunicorn(env, workers=1, log_path=str(tmp_path / "g.log")) as (base, _):
        upstream = base.removeprefix("http://")
        with nginx(upstream, str(tmp_path / "allowed")) as proxy:
            allowed = requests.get(proxy + "/metrics", headers=ADMIN, timeout=10)
            assert allowed.status_code == 200 and "faceapp_http_requests_total" in allowed.text
        # The same config for a client it does not list (loopback no longer allowed).
        with nginx(
            upstream,
            str(tmp_path / "denied"),
            edit=lambda site: site.replace("allow 127.0.0.1;", "").replace("allow ::1;", ""),
        ) as proxy:
            denied = requests.get(proxy + "/metrics", headers=ADMIN, timeout=10)
            assert denied.status_code == 404
            assert denied.json()["error"]["code"] == "route.not_found"
            assert requests.get(proxy + "/api/health", timeout=10).status_code == 200

"""The configuration file: defaults, every error listed with its option, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import ConfigError, parse

VALID: dict[str, Any] = {
    "api": {"host": "0.0.0.0", "port": 8000},
    "pools": [{"model": "tiny-llama", "workers": [
        {"name": "gpu1/main", "url": "http://10.0.0.5:8000", "capacity": 8},
        {"name": "gpu2/main", "url": "http://10.0.0.6:8000/", "capacity": 16},
    ]}],
}


def errors(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return caught.value.errors


def test_defaults() -> None:
    cfg = parse(VALID)
    assert (cfg.api.port, cfg.metrics.port, cfg.metrics.host) == (8000, 8080, "0.0.0.0")
    pool = cfg.pools[0]
    assert (pool.queue_size, pool.queue_timeout_s, pool.request_timeout_s) == (100, 30.0, 600.0)
    assert pool.workers[1].url == "http://10.0.0.6:8000"  # no trailing slash
    assert (cfg.health.interval_s, cfg.health.rise, cfg.health.fall) == (5.0, 2, 3)
    assert (cfg.connect_retries, cfg.shutdown_timeout_s) == (2, 30.0)
    # vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE default (5 s); the gateway reuses for less.
    assert (pool.workers[0].keepalive_s, cfg.upstream_keepalive_s) == (5.0, 4.0)


def _with_keepalives(upstream: Any, workers: tuple[Any, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"pools": [{"model": "tiny-llama", "workers": [
        {"name": "gpu1/main", "url": "http://10.0.0.5:8000", "capacity": 8},
        {"name": "gpu2/main", "url": "http://10.0.0.6:8000", "capacity": 8}]}]}
    if upstream is not None:
        data["upstream_keepalive_s"] = upstream
    for worker, keepalive in zip(data["pools"][0]["workers"], workers, strict=True):
        if keepalive is not None:
            worker["keepalive_s"] = keepalive
    return data


def test_upstream_keepalive_below_every_worker_s_keepalive_or_0() -> None:
    cfg = parse(_with_keepalives(9.5, (10, 60)))
    assert cfg.upstream_keepalive_s == 9.5
    assert [w.keepalive_s for w in cfg.pools[0].workers] == [10.0, 60.0]
    assert parse(_with_keepalives(0, (0, None))).upstream_keepalive_s == 0.0  # no reuse
    # Equal is refused: the worker's close and the gateway's next request may cross.
    assert errors(_with_keepalives(None, (5, 4))) == [
        "upstream_keepalive_s: must be below every worker's keepalive_s (the worker closes "
        "connections idle that long), got 4 s; not below: "
        "pools[0].workers[1].keepalive_s=4 (gpu2/main); 0 opens a new connection per request"]
    assert errors(_with_keepalives(6, (None, 2.5))) == [
        "upstream_keepalive_s: must be below every worker's keepalive_s (the worker closes "
        "connections idle that long), got 6 s; not below: "
        "pools[0].workers[0].keepalive_s=5 (gpu1/main), "
        "pools[0].workers[1].keepalive_s=2.5 (gpu2/main); 0 opens a new connection per request"]
    assert errors(_with_keepalives(-1, (None, None))) == [
        "upstream_keepalive_s: must be a finite number of seconds >= 0, got -1"]
    assert errors(_with_keepalives(None, ("5s", None))) == [
        "pools[0].workers[0].keepalive_s: must be a number of seconds, got '5s'"]


def test_every_error_is_listed_with_its_option() -> None:
    bad = {
        "api": {"port": 8080},
        "metrics": {"port": 8080},
        "health": {"interval_s": 1, "timeout_s": -2, "rise": 0, "fall": "3"},
        "shutdown_timeout_s": 0,
        "connect_timeout_s": "soon",
        "typo_option": 1,
        "pools": [
            {"model": "a", "queue_size": 0, "queue_timeout_s": -1, "request_timeout_s": None,
             "workers": [
                 {"name": "w1", "url": "ftp://x:1", "capacity": 0},
                 {"name": "w1", "url": "http://10.0.0.1:notaport", "capacity": 1.5},
                 {"name": "w3", "url": "http://:8000"},
             ]},
            {"model": "a", "workers": []},
            {"model": "", "workers": [{"name": "w4", "url": "http://h:1", "capacity": 1,
                                       "weight": 2}]},
        ],
    }
    found = errors(bad)
    expected_options = [
        "metrics.port", "health.timeout_s", "health.rise", "health.fall", "shutdown_timeout_s",
        "connect_timeout_s", "typo_option", "pools[0].queue_size", "pools[0].queue_timeout_s",
        "pools[0].request_timeout_s", "pools[0].workers[0].url", "pools[0].workers[0].capacity",
        "pools[0].workers[1].name", "pools[0].workers[1].url", "pools[0].workers[1].capacity",
        "pools[0].workers[2].url", "pools[0].workers[2].capacity", "pools[1].model",
        "pools[1].workers", "pools[2].model", "pools[2].workers[0].weight",
    ]
    for option in expected_options:
        assert any(e.startswith(option + ":") for e in found), (option, found)
    assert len(found) == len(expected_options), found
    assert any("duplicate worker name 'w1'" in e for e in found)
    assert any("clashes with api.port" in e for e in found)


@pytest.mark.parametrize("data, option", [
    ({}, "pools"),
    ({"pools": []}, "pools"),
    ({"pools": [{"model": "m"}]}, "pools[0].workers"),
    (None, "(top level)"),
    ([1, 2], "(top level)"),
    ({"api": {"host": "::", "port": 9000}, "metrics": {"host": "127.0.0.1", "port": 9000},
      "pools": VALID["pools"]}, "metrics.port"),
    ({"pools": VALID["pools"], "connect_retries": True}, "connect_retries"),
    ({"pools": [{"model": "m", "workers": [{"name": "w", "url": "http://h:1", "capacity": 1,
                                            "extra": 1}]}], "health": {"interval_s": "nan"}},
     "health.interval_s"),
])
def test_single_errors(data: Any, option: str) -> None:
    assert any(e.startswith(option + ":") for e in errors(data))


def test_check_config_exit_status_and_message(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(VALID))
    assert main(["--check-config", str(good)]) == 0
    assert "valid (1 pool(s), 2 worker(s))" in capsys.readouterr().out
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"pools": [{"model": "m", "queue_size": 0, "workers": [
        {"name": "w", "url": "http://h:1", "capacity": 0}]}]}))
    assert main(["--check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 error(s)" in err
    assert "pools[0].queue_size: must be >= 1, got 0" in err
    assert "pools[0].workers[0].capacity: must be >= 1, got 0" in err
    # The same for --config: an invalid file never starts a gateway.
    assert main(["--config", str(bad)]) == 2
    notyaml = tmp_path / "broken.yml"
    notyaml.write_text("pools: [\n")
    assert main(["--check-config", str(notyaml)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["--check-config", str(tmp_path / "missing.yml")]) == 2


def test_console_script_help_and_exit_2(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("vllm-gateway")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "--check-config FILE" in out.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text("pools: []\n")
    run = subprocess.run([script, "--check-config", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2
    assert "pools: must be a non-empty list" in run.stderr
    usage = subprocess.run([script], capture_output=True, text=True)
    assert usage.returncode == 2  # neither --config nor --check-config

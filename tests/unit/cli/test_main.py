"""The ``kvproxy serve`` start: flags, KVPROXY_* variables and the --config file become the
Settings it serves with; a bad value is one line naming its key (exit 2), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.backends.upstream import UpstreamSpec
from proxy.cli import main as cli
from proxy.config.settings import Settings


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Settings]]:
    """``main`` up to the server: the Settings it would listen with, instead of listening.
    The umask main sets is put back (it is the test process's)."""
    got: list[Settings] = []

    async def fake_serve(settings: Settings) -> None:
        got.append(settings)

    monkeypatch.setattr(cli, "serve", fake_serve)
    for name in [n for n in os.environ if n.startswith("KVPROXY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KVPROXY_DATA_DIR", str(tmp_path / "data"))
    umask = os.umask(0o022)
    os.umask(umask)
    yield got
    os.umask(umask)


def start(served: list[Settings], *argv: str) -> Settings:
    assert cli.main(["serve", "--log-format", "json", *argv]) == 0
    return served[-1]


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kvproxy.toml"
    path.write_text(text)
    return str(path)


def test_an_explicit_flag_equal_to_its_default_beats_the_file(served, tmp_path) -> None:
    config = toml(tmp_path, "port = 9000\nmax-tapes = 7\n")
    s = start(served, "--config", config, "--port", "11435")
    assert (s.port, s.max_tapes) == (11435, 7)


def test_the_environment_beats_the_file_and_a_flag_beats_both(
    served, tmp_path, monkeypatch
) -> None:
    config = toml(tmp_path, "port = 9000\n")
    monkeypatch.setenv("KVPROXY_PORT", "4242")
    assert start(served, "--config", config).port == 4242
    assert start(served, "--config", config, "--port", "1").port == 1
    monkeypatch.setenv("KVPROXY_CONFIG", config)
    monkeypatch.delenv("KVPROXY_PORT")
    assert start(served).port == 9000


def test_a_string_where_a_list_is_expected_is_one_item(served, tmp_path) -> None:
    config = toml(tmp_path, 'upstream = "http://127.0.0.1:8080"\n')
    assert start(served, "--config", config).upstreams == (UpstreamSpec("http://127.0.0.1:8080"),)


@pytest.mark.parametrize(
    ("env", "text", "argv", "named"),
    [
        ({}, "port = [1, 2]\n", [], "port"),
        ({}, 'port = "abc"\n', [], "port"),
        ({}, "no-such-option = 1\n", [], "no-such-option"),
        ({}, "port = [\n", [], "kvproxy.toml"),
        ({"KVPROXY_PORT": "abc"}, "", [], "KVPROXY_PORT"),
        ({"KVPROXY_LOG_CONTENT": "maybe"}, "", [], "KVPROXY_LOG_CONTENT"),
        ({"KVPROXY_LLAMA_ARGS": "--alias 'unclosed"}, "", [], "KVPROXY_LLAMA_ARGS"),
        ({}, "", ["--log-level", "loud"], "--log-level"),
        ({}, "", ["--rewrite", "nonsense"], "--rewrite"),
        ({}, "", ["--volatile-pattern", "(unclosed"], "--volatile-pattern"),
        ({}, "", ["--ollama-keep-alive", "soon"], "--ollama-keep-alive"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_key(
    served, tmp_path, monkeypatch, capsys, env, text, argv, named
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = ["--config", toml(tmp_path, text)] if text else []
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", *config, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert named in err and "error" in err and "Traceback" not in err
    assert served == []


def test_a_secret_is_not_echoed_in_an_error(served, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--config", toml(tmp_path, 'api-key = ["hunter2"]\n')])
    err = capsys.readouterr().err
    assert "api-key" in err and "hunter2" not in err


def test_a_flag_of_the_wrong_type_is_one_line_too(served, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--port", "abc"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--port" in err and len(err.splitlines()) == 1, err


def test_the_environment_is_read_not_written(served, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.setenv("KVPROXY_PORT", "4242")
    before = dict(os.environ)
    assert start(served, "--config", toml(tmp_path, "port = 9000\n")).port == 4242
    assert dict(os.environ) == before


def test_transformers_is_quiet_without_an_environment_variable() -> None:
    code = ("from proxy.cli.main import quiet_transformers; quiet_transformers(); "
            "import transformers")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFORMERS_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "PyTorch was not found" not in result.stderr


def test_embedded_options(served, monkeypatch) -> None:
    monkeypatch.setenv("KVPROXY_SLOTS", "2")
    s = start(served, "--llama-args", "--cache-ram 0 --threads 2", "--ctx-per-slot", "1024")
    assert s.embedded.parallel == 2 and s.embedded.ctx_per_slot == 1024
    assert s.embedded.extra_args == ("--cache-ram", "0", "--threads", "2")


def test_no_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2 and "error" in capsys.readouterr().err


def test_a_start_that_fails_says_why_once_and_nothing_else(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--upstream", "http://127.0.0.1:1",
         "--data-dir", str(tmp_path), "--port", "0", "--log-format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert "record_writer_died" not in out
    assert out.count("127.0.0.1:1 failed") == 1, out


def test_serve_keeps_what_start_up_built_out_of_the_collectors_scans() -> None:
    """``kvproxy serve`` (and bench/own_time.py, which stands for it) freezes what start-up
    built: the collector's scans during a request walk only what the request allocated."""
    import gc

    from proxy.cli.main import tune_collector

    try:
        gc.unfreeze()
        tune_collector()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

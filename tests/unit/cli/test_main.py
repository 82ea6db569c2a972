"""Flags and KVPROXY_* variables become one Settings; bad values are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.backends.upstream import UpstreamSpec
from proxy.cli.main import build_parser, main, settings_from


def settings(argv: list[str]):
    return settings_from(build_parser().parse_args(["serve", *argv]))


def test_defaults() -> None:
    s = settings([])
    assert (s.host, s.port, s.upstreams) == ("127.0.0.1", 11435, ())
    assert s.max_body_bytes == 32 * 1024 * 1024
    assert (s.embedded.parallel, s.embedded.ctx_per_slot) == (4, 8192)


@pytest.mark.parametrize(
    ("env", "argv", "field", "expected"),
    [
        ({"KVPROXY_PORT": "9000"}, [], "port", 9000),
        ({"KVPROXY_PORT": "9000"}, ["--port", "9001"], "port", 9001),
        ({"KVPROXY_DATA_DIR": "/tmp/x"}, [], "data_dir", Path("/tmp/x")),
        ({"KVPROXY_UPSTREAM_TIMEOUT": "2.5"}, [], "upstream_timeout", 2.5),
        (
            {"KVPROXY_UPSTREAM": "http://a:1, ollama:http://b:2"},
            [],
            "upstreams",
            (UpstreamSpec("http://a:1"), UpstreamSpec("http://b:2", "ollama")),
        ),
        (
            {},
            ["--upstream", "llama:http://a:1/", "--upstream", "http://b:2"],
            "upstreams",
            (UpstreamSpec("http://a:1", "llama"), UpstreamSpec("http://b:2")),
        ),
    ],
)
def test_flags_and_environment(monkeypatch, env, argv, field, expected) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert getattr(settings(argv), field) == expected


def test_embedded_flags(monkeypatch) -> None:
    monkeypatch.setenv("KVPROXY_SLOTS", "2")
    s = settings(["--llama-args", "--cache-ram 0 --threads 2", "--ctx-per-slot", "1024"])
    assert s.embedded.parallel == 2 and s.embedded.ctx_per_slot == 1024
    assert s.embedded.extra_args == ("--cache-ram", "0", "--threads", "2")


@pytest.mark.parametrize(
    ("env", "argv"),
    [({"KVPROXY_PORT": "abc"}, ["serve"]), ({}, ["serve", "--log-level", "loud"]), ({}, [])],
)
def test_bad_values_are_usage_errors(monkeypatch, capsys, env, argv) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_config_file_sets_options_that_flags_and_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.cli.main import parse

    config = tmp_path / "kvproxy.toml"
    config.write_text(
        'rewrite = "-volatile"\nport = 12345\nupstream = ["llama:http://a:1"]\n'
        'volatile-pattern = ["<ctx>.*?</ctx>"]\nmax-tapes = 7\ndata-dir = "/tmp/kv"\n'
    )
    s = settings_from(parse(["serve", "--config", str(config)]))
    assert s.rewrite.rules == {"tape", "compaction", "tools"}
    assert (s.port, s.max_tapes, s.data_dir) == (12345, 7, Path("/tmp/kv"))
    assert s.upstreams == (UpstreamSpec("http://a:1", "llama"),)
    assert [p.pattern for p in s.rewrite.patterns] == ["<ctx>.*?</ctx>"]
    assert settings_from(parse(["serve", "--config", str(config), "--port", "9"])).port == 9
    monkeypatch.setenv("KVPROXY_MAX_TAPES", "3")
    assert settings_from(parse(["serve", "--config", str(config)])).max_tapes == 3


def test_config_file_errors_are_usage_errors(tmp_path: Path) -> None:
    from proxy.cli.main import parse

    bad = tmp_path / "bad.toml"
    bad.write_text("no-such-option = 1\n")
    with pytest.raises(SystemExit) as exit_info:
        parse(["serve", "--config", str(bad)])
    assert exit_info.value.code == 2
    bad.write_text("port = [\n")
    with pytest.raises(SystemExit):
        parse(["serve", "--config", str(bad)])


def test_serve_help_renders_every_option(capsys) -> None:  # type: ignore[no-untyped-def]
    import pytest as _pytest

    from proxy.cli.main import build_parser

    with _pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--allow-slot-actions", "--api-key-file", "--records-max-bytes", "--slot-dir",
                 "--keep-tapes", "--idle-timeout", "--queue-timeout"):  # fmt: skip
        assert flag in out


def test_an_explicit_flag_equal_to_its_default_beats_the_file(tmp_path: Path) -> None:
    from proxy.cli.main import parse

    config = tmp_path / "kvproxy.toml"
    config.write_text("port = 9000\nmax-tapes = 7\n")
    s = settings_from(parse(["serve", "--config", str(config), "--port", "11435"]))
    assert (s.port, s.max_tapes) == (11435, 7)


def test_a_string_where_a_list_is_expected_is_one_item(tmp_path: Path) -> None:
    from proxy.cli.main import parse

    config = tmp_path / "kvproxy.toml"
    config.write_text('upstream = "llama:http://127.0.0.1:8080"\n')
    s = settings_from(parse(["serve", "--config", str(config)]))
    assert s.upstreams == (UpstreamSpec("http://127.0.0.1:8080", "llama"),)


def test_a_list_where_one_value_is_expected_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy.cli.main import parse

    config = tmp_path / "kvproxy.toml"
    config.write_text("port = [1, 2]\n")
    with pytest.raises(SystemExit):
        parse(["serve", "--config", str(config)])
    assert "port" in capsys.readouterr().err


def test_the_environment_is_read_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from proxy.cli.main import parse

    monkeypatch.setenv("KVPROXY_PORT", "4242")
    config = tmp_path / "kvproxy.toml"
    config.write_text("port = 9000\n")
    before = dict(os.environ)
    writes: list[str] = []
    monkeypatch.setattr(os.environ.__class__, "__delitem__",
                        lambda self, key: writes.append(key))  # fmt: skip
    assert settings_from(parse(["serve", "--config", str(config)])).port == 4242
    assert writes == [] and dict(os.environ) == before


def test_a_start_that_fails_says_why_once_and_nothing_else(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--upstream", "http://127.0.0.1:1",
         "--data-dir", str(tmp_path), "--port", "0", "--log-format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert "record_writer_died" not in out
    assert out.count("127.0.0.1:1 failed") == 1, out

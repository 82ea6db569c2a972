"""Flags and KVPROXY_* variables become one Settings; bad values are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import build_parser, main, settings_from
from proxy.upstream import UpstreamSpec


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

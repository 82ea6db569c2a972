"""The command line: `kvproxy serve --help` lists the same options as before, with the
defaults of the resolved options; parsing gives only the flags the command line gave."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from proxy.cli.options import build_parser, explicit_flags
from proxy.config.resolve import ServeOptions

# The options of `kvproxy serve --help` (issue 18: they do not change).
SERVE_FLAGS = (
    "--host", "--port", "--data-dir", "--max-body-bytes", "--max-inflight-body-bytes",
    "--connect-timeout", "--idle-timeout", "--body-timeout", "--upstream-max-inflight",
    "--queue-timeout", "--shutdown-grace", "--upstream-timeout", "--ollama-num-ctx",
    "--ollama-keep-alive", "--log-level", "--log-format", "--tokenizer",
    "--slot-cache-max-bytes", "--slot-checkpoint-idle", "--slot-dir", "--api-key",
    "--api-key-file", "--rewrite", "--rewrite-reserve-tokens", "--max-tapes", "--keep-tapes",
    "--records-max", "--records-max-bytes", "--route-hot-tokens", "--route-busy-wait-tokens",
    "--route-max-queue", "--route-min-restore-gain", "--upstream-cache-ram",
    "--config", "--log-content",
    "--allow-slot-actions", "--upstream-swa-full", "--allow-admin", "--volatile-pattern",
    "--cors-origin", "--allowed-host", "--warm", "--upstream", "--model", "--slots",
    "--ctx-per-slot", "--llama-args",
)  # fmt: skip


def serve_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        build_parser({}).parse_args(["serve", "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_serve_lists_the_same_options(capsys) -> None:
    out = serve_help(capsys).split("\noptions:\n", 1)[1]
    listed = [line.split()[0].rstrip(",") for line in out.splitlines()
              if line.startswith("  -")]  # fmt: skip
    assert tuple(listed) == ("-h", *SERVE_FLAGS)


def test_every_flag_is_an_option_and_every_option_a_flag() -> None:
    fields = {f"--{name.replace('_', '-')}" for name in ServeOptions.model_fields}
    assert fields == set(SERVE_FLAGS) - {"--config"}


def serve_actions() -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser({})._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[-1]: a for a in sub.choices["serve"]._actions}


@pytest.mark.parametrize(
    ("flag", "shown"),
    [("--port", "11435"), ("--connect-timeout", "10"), ("--slot-checkpoint-idle", "2"),
     ("--max-body-bytes", "33554432"), ("--upstream", "None"), ("--log-content", "False"),
     ("--data-dir", "None"), ("--config", "None"), ("--llama-args", "")],
)  # fmt: skip
def test_help_shows_the_built_in_defaults(monkeypatch, flag, shown) -> None:
    monkeypatch.setenv("KVPROXY_PORT", "9000")  # the help is not the environment's
    action = serve_actions()[flag]
    assert action.help.endswith(f"(default: {shown})")
    assert action.default is argparse.SUPPRESS  # a flag not given is absent


def test_explicit_flags_are_only_what_the_command_line_gives() -> None:
    assert explicit_flags(["serve"]) == {}
    argv = ["serve", "--port", "11435", "--log-content", "--upstream", "a", "--upstream", "b",
            "--config", "k.toml"]  # fmt: skip
    assert explicit_flags(argv) == {"port": 11435, "log_content": True, "upstream": ["a", "b"],
                                    "config": Path("k.toml")}  # fmt: skip


def test_readers_take_the_data_dir_from_the_environment_given() -> None:
    args = build_parser({"KVPROXY_DATA_DIR": "/d"}).parse_args(["stats"])
    assert args.data_dir == Path("/d")
    args = build_parser({"XDG_STATE_HOME": "/s"}).parse_args(["tail"])
    assert args.data_dir == Path("/s/kvproxy")

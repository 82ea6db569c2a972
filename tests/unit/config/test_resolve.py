"""One pure resolution: flag > KVPROXY_* variable > --config file > default, each value
typed once; a bad value is a ConfigError line naming where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.backends.upstream import UpstreamSpec
from proxy.config.resolve import (
    ConfigError,
    ServeOptions,
    config_path,
    read_config,
    resolve,
    settings_from,
)


def test_defaults_and_the_state_dir() -> None:
    o = resolve({}, {"XDG_STATE_HOME": "/state"}, {})
    assert (o.host, o.port, o.upstream, o.log_content) == ("127.0.0.1", 11435, (), False)
    assert o.data_dir == Path("/state/kvproxy")
    assert resolve({}, {}, {}).data_dir == Path.home() / ".local" / "state" / "kvproxy"


@pytest.mark.parametrize(
    ("flags", "environ", "file", "port"),
    [
        ({"port": 11435}, {}, {"port": 9000}, 11435),  # a flag equal to its default
        ({}, {"KVPROXY_PORT": "4242"}, {"port": 9000}, 4242),
        ({"port": 1}, {"KVPROXY_PORT": "4242"}, {"port": 9000}, 1),
        ({}, {}, {"port": 9000}, 9000),
        ({}, {"KVPROXY_PORT": ""}, {}, 11435),  # an empty variable is unset
    ],
)
def test_precedence(flags, environ, file, port) -> None:
    assert resolve(flags, environ, file).port == port


def test_the_process_environment_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVPROXY_PORT", "4242")
    assert resolve({}, {}, {}).port == 11435


def test_file_keys_as_flags_or_field_names() -> None:
    o = resolve({}, {}, {"max-tapes": 7, "records_max": 9, "data-dir": "/tmp/kv"})
    assert (o.max_tapes, o.records_max, o.data_dir) == (7, 9, Path("/tmp/kv"))


@pytest.mark.parametrize(
    ("file", "field", "expected"),
    [
        ({"upstream": "http://127.0.0.1:8080"}, "upstream", ("http://127.0.0.1:8080",)),
        ({"volatile-pattern": "a,b"}, "volatile_pattern", ("a,b",)),
        ({"warm": ["a.json", "auto"]}, "warm", ("a.json", "auto")),
    ],
)
def test_a_string_where_a_list_is_expected_is_one_item(file, field, expected) -> None:
    assert getattr(resolve({}, {}, file), field) == expected


def test_variables_split_lists_by_their_separator() -> None:
    o = resolve({}, {"KVPROXY_UPSTREAM": "http://a:1, ollama:http://b:2,",
                     "KVPROXY_VOLATILE_PATTERN": "a,b\n\n c"}, {})  # fmt: skip
    assert o.upstream == ("http://a:1", "ollama:http://b:2")
    assert o.volatile_pattern == ("a,b", " c")


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("yes", True), ("0", False)]
)
def test_switches_from_the_environment(value, expected) -> None:
    assert resolve({}, {"KVPROXY_LOG_CONTENT": value}, {}).log_content is expected


@pytest.mark.parametrize(
    ("flags", "environ", "file", "line"),
    [
        ({}, {}, {"port": [1, 2]}, "kvproxy.toml: port: "),
        ({}, {}, {"port": "abc"}, "kvproxy.toml: port: "),
        ({}, {}, {"port": True}, "kvproxy.toml: port: takes a value, not true or false"),
        ({}, {}, {"upstream": [1]}, "kvproxy.toml: upstream item 1: "),
        ({}, {}, {"no-such-option": 1}, "kvproxy.toml: no-such-option: unknown option"),
        ({}, {}, {"config": "x.toml"}, "kvproxy.toml: config: unknown option"),
        ({}, {"KVPROXY_PORT": "abc"}, {}, "KVPROXY_PORT: "),
        ({}, {"KVPROXY_LOG_CONTENT": "maybe"}, {}, "KVPROXY_LOG_CONTENT: "),
        ({}, {"KVPROXY_LLAMA_ARGS": "'unclosed"}, {}, "KVPROXY_LLAMA_ARGS: No closing quotation"),
        ({"log_level": "loud"}, {}, {}, "--log-level: "),
        ({"log_format": "xml"}, {}, {}, "--log-format: "),
        ({"keep_tapes": "disk"}, {}, {}, "--keep-tapes: "),
        ({"rewrite": "nonsense"}, {}, {}, "--rewrite: unknown rewrite rule 'nonsense'"),
        ({"volatile_pattern": ["("]}, {}, {}, "--volatile-pattern item 1: not a regex"),
        ({"ollama_keep_alive": "soon"}, {}, {}, "--ollama-keep-alive: "),
    ],
)
def test_a_bad_value_names_its_key(flags, environ, file, line) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(flags, environ, file, Path("kvproxy.toml"))
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith(line), info.value.lines


def test_a_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, {}, {"api-key": ["hunter2"]}, Path("k.toml"))
    assert "api-key" in str(info.value) and "hunter2" not in str(info.value)


def test_every_bad_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, {"KVPROXY_PORT": "x"}, {"max-tapes": "y"}, Path("k.toml"))
    assert [line.split(":")[0] for line in info.value.lines] == ["KVPROXY_PORT", "k.toml"]


def test_the_config_file_path_flag_then_variable() -> None:
    assert config_path({"config": Path("a.toml")}, {"KVPROXY_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path({}, {"KVPROXY_CONFIG": "b.toml"}) == Path("b.toml")
    assert config_path({}, {"KVPROXY_CONFIG": ""}) is None


def test_read_config(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('port = 1\nupstream = "http://a:1"\n')
    assert read_config(path) == {"port": 1, "upstream": "http://a:1"}
    path.write_text("port = [\n")
    with pytest.raises(ConfigError, match=r"k\.toml"):
        read_config(path)
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        read_config(tmp_path / "missing.toml")


def test_settings_from_options() -> None:
    o = resolve(
        {"upstream": ["llama:http://a:1/", "http://b:2"], "allowed_host": ["Example.COM."],
         "warm": ["auto"], "tokenizer": Path("server"), "rewrite": "-volatile",
         "ollama_num_ctx": -1, "ollama_keep_alive": "off", "route_max_queue": 3},
        {}, {"volatile-pattern": "<ctx>.*?</ctx>"},
    )  # fmt: skip
    s = settings_from(o, api_keys=frozenset({"k"}), warm=(), model=None, llama_args=())
    assert s.upstreams == (UpstreamSpec("http://a:1", "llama"), UpstreamSpec("http://b:2"))
    assert s.exposure.allowed_hosts == {"example.com"} and s.exposure.api_keys == {"k"}
    assert s.warm_auto and s.server_tokens and s.tokenizer is None
    assert s.rewrite.rules == {"tape", "compaction", "tools"}
    assert [p.pattern for p in s.rewrite.patterns] == ["<ctx>.*?</ctx>"]
    assert (s.ollama_keep.num_ctx, s.ollama_keep.stable_ctx, s.ollama_keep.keep_alive) == (
        None, False, "")  # fmt: skip
    assert s.route.max_queue == 3


def test_options_are_frozen() -> None:
    with pytest.raises(ValueError):
        ServeOptions().port = 1  # type: ignore[misc]

"""Runtime settings: the defaults kvproxy starts with, and the paths under the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.settings import KEEP_TAPES, Settings, default_data_dir


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"XDG_STATE_HOME": "/state"}, Path("/state/kvproxy")),
     ({"XDG_STATE_HOME": ""}, Path.home() / ".local" / "state" / "kvproxy"),
     ({}, Path.home() / ".local" / "state" / "kvproxy")],
)  # fmt: skip
def test_default_data_dir(environ: dict[str, str], expected: Path) -> None:
    assert default_data_dir(environ) == expected


def test_the_default_data_dir_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/elsewhere")
    assert Settings().data_dir == Path.home() / ".local" / "state" / "kvproxy"


def test_paths_under_the_data_dir() -> None:
    settings = Settings(data_dir=Path("/d"))
    assert (settings.records_dir, settings.slot_dir) == (Path("/d/records"), Path("/d/slots"))


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.upstreams) == ("127.0.0.1", 11435, ())
    assert s.max_body_bytes == 32 * 1024**2 and s.max_inflight_body_bytes == 256 * 1024**2
    assert s.keep_tapes in KEEP_TAPES and s.keep_tapes == "lmdb"
    assert not (s.log_content or s.server_tokens or s.warm_auto or s.upstream_swa_full)
    assert s.rewrite.rules == {"tape", "volatile", "compaction", "tools"}
    assert s.exposure.api_keys == frozenset() and s.ollama_keep.keep_alive == "30m"


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]

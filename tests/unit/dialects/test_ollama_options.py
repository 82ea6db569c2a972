"""ollama's ``options``/``format`` to canonical params and back (pure tables)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import BadRequest
from proxy.dialects.ollama_options import (
    OPTION_TO_PARAM,
    PARAM_TO_OPTION,
    join_options,
    ollama_fields,
    split_options,
)

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}


@pytest.mark.parametrize(
    ("body", "params", "rest"),
    [
        ({}, {}, {}),
        ({"options": None}, {}, {}),
        ({"options": {"num_predict": 8, "num_ctx": 4096}}, {"max_tokens": 8}, {"num_ctx": 4096}),
        ({"options": {"stop": ["\n"], "seed": 1}}, {"stop": ["\n"], "seed": 1}, {}),
        ({"format": "json"}, {"response_format": {"type": "json_object"}}, {}),
        ({"format": SCHEMA},
         {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}, {}),
        ({"format": ""}, {}, {}),
    ],
)  # fmt: skip
def test_split_options(body: dict[str, Any], params: dict[str, Any], rest: dict[str, Any]) -> None:
    assert split_options(body) == (params, rest)


@pytest.mark.parametrize(
    ("body", "says"),
    [({"options": [1]}, "'options'"), ({"options": "x"}, "'options'"), ({"format": 7}, "'format'"),
     ({"format": "yaml"}, "'format'")],
)  # fmt: skip
def test_split_options_refuses_what_ollama_would(body: dict[str, Any], says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        split_options(body)


@pytest.mark.parametrize(
    "body",
    [{"options": {"num_predict": 8, "num_ctx": 4096, "top_k": 3}}, {"format": "json"},
     {"format": SCHEMA, "options": {"temperature": 0}}, {}],
)  # fmt: skip
def test_join_options_inverts_split_options(body: dict[str, Any]) -> None:
    assert join_options(*split_options(body)) == body


def test_canonical_params_without_an_ollama_name_are_not_sent() -> None:
    assert join_options({"max_tokens": 4, "logit_bias": {}}, {}) == {"options": {"num_predict": 4}}


def test_the_two_maps_are_inverse() -> None:
    assert {v: k for k, v in PARAM_TO_OPTION.items()} == dict(OPTION_TO_PARAM)


def test_ollama_fields_keep_what_is_not_structural() -> None:
    body = {"model": "m", "messages": [], "keep_alive": "5m", "options": {"num_ctx": 2}}
    params, extra = ollama_fields(body, ("model", "messages", "options", "format"))
    assert params == {} and extra == {"keep_alive": "5m", "options": {"num_ctx": 2}}

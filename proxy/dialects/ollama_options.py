"""ollama's ``options``/``format`` fields mapped to canonical (OpenAI/llama-server) names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.core.errors import BadRequest

# ollama option name -> canonical parameter name (llama-server accepts all of these).
OPTION_TO_PARAM: Mapping[str, str] = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
PARAM_TO_OPTION: Mapping[str, str] = {v: k for k, v in OPTION_TO_PARAM.items()}


def split_options(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(canonical params, ollama-only options such as num_ctx that have no equivalent)."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object")
    params = {OPTION_TO_PARAM[k]: v for k, v in options.items() if k in OPTION_TO_PARAM}
    rest = {k: v for k, v in options.items() if k not in OPTION_TO_PARAM}
    fmt = body.get("format")
    if fmt == "json":
        params["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        params["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt}}
    elif fmt not in (None, ""):
        raise BadRequest("'format' must be \"json\" or a JSON schema object")
    return params, rest


def join_options(params: Mapping[str, Any], rest: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of split_options: an ollama body's ``options`` and ``format`` fields."""
    out: dict[str, Any] = {}
    options = dict(rest)
    for name, value in params.items():
        if name in PARAM_TO_OPTION:
            options[PARAM_TO_OPTION[name]] = value
    if options:
        out["options"] = options
    fmt = params.get("response_format")
    if isinstance(fmt, Mapping):
        if fmt.get("type") == "json_object":
            out["format"] = "json"
        elif fmt.get("type") == "json_schema":
            out["format"] = fmt["json_schema"]["schema"]
    return out


def ollama_fields(
    body: Mapping[str, Any], structural: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(canonical params, ollama-only fields) of an ollama body, beyond its structural ones."""
    params, other_options = split_options(body)
    extra = {k: v for k, v in body.items() if k not in structural}
    if other_options:
        extra["options"] = other_options
    return params, extra


def render_ollama_fields(params: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    rest = dict(extra)
    return {**join_options(params, rest.pop("options", {})), **rest}

"""llama-server renders and tokenizes: exact, at the cost of loopback round trips."""

from __future__ import annotations

from typing import Any

from proxy.core.conversation import Conversation
from proxy.tokens.base import TokenizerUnavailable, completion_prompt, template_body


class ServerTokenizer:
    """llama-server renders and tokenizes: exact, at the cost of loopback round trips."""

    exact = True
    user_marker: tuple[int, ...] = ()

    def __init__(self, upstream: Any) -> None:
        self.upstream = upstream

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.upstream.request("POST", path, json_body=body) as resp:
            if resp.status != 200:
                raise TokenizerUnavailable(f"{path} answered {resp.status}")
            try:
                data = await resp.json(content_type=None)
            except ValueError as exc:
                raise TokenizerUnavailable(f"{path} sent invalid JSON") from exc
            if not isinstance(data, dict):
                raise TokenizerUnavailable(f"{path} sent no object")
            return data

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = await self.post(
            "/tokenize", {"content": text, "add_special": add_special, "parse_special": True}
        )
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise TokenizerUnavailable("/tokenize sent no token list")
        return [t if isinstance(t, int) else t["id"] for t in tokens]

    async def render(self, body: dict[str, Any]) -> str:
        return (await self.post("/apply-template", body))["prompt"]

    def text_tokens(self, text: str) -> list[int] | None:
        return [] if not text else None

    async def reply_tokens(self, text: str) -> list[int] | None:
        """The reply's tokens, asked of ``/tokenize`` after the response ended (the slot
        manager adds them to what the slot holds, off the response path)."""
        return await self.tokenize(text, add_special=False)

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int] | None:
        if conv.kind == "chat":
            return await self.tokenize(await self.render(template_body(body)))
        prompt = completion_prompt(body)
        if prompt is None or isinstance(prompt, list):
            return prompt
        return await self.tokenize(prompt)

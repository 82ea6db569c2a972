"""Stand-ins for the I/O around the tokenizers: an upstream answering canned JSON, and an
encoder that maps each character to its code point."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any


class CannedResponse:
    def __init__(self, status: int, data: Any) -> None:
        self.status, self.data = status, data

    async def json(self, content_type: Any = None) -> Any:
        if isinstance(self.data, Exception):
            raise self.data
        return self.data


class CannedUpstream:
    """Answers each path with a fixed (status, JSON) and records the bodies it was sent."""

    kind = "llama"
    url = "http://canned"

    def __init__(self, answers: dict[str, tuple[int, Any]], props: Any = None) -> None:
        self.answers = answers
        self.props = props
        self.sent: list[tuple[str, Any]] = []

    @contextlib.asynccontextmanager
    async def request(self, method: str, path: str, json_body: Any = None) -> AsyncIterator[Any]:
        self.sent.append((path, json_body))
        status, data = self.answers[path]
        yield CannedResponse(status, data)


class CharEncoder:
    """One token per character; BOS 1 / EOS 2 when the vocabulary adds them."""

    def __init__(self, add_bos: bool = False, add_eos: bool = False) -> None:
        self.add_bos, self.add_eos = add_bos, add_eos

    def encode(self, text: str, add_special: bool = True, lead: str | None = None) -> list[int]:
        ids = [ord(c) for c in text]
        if add_special:
            ids = [1] * self.add_bos + ids + [2] * self.add_eos
        return ids

    def unknown_chars(self, text: str, add_special: bool = True) -> int:
        return len(text)

    def split_known(self, text: str, lead: str | None = None) -> None:
        return None

    def prepare(self, template: str) -> None:
        pass

    def special_strings(self) -> dict[str, str]:
        return {"bos_token": "<s>", "eos_token": "</s>"}

"""Issue 21: a ``--warm`` file with a non-ASCII name silently stopped the warmer: its name
went out as a header value, httpx refuses non-ASCII there (UnicodeEncodeError, no
HTTPError), and the exception ended the warm-up task."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import httpx

from proxy.web.warm import WARM_HEADER, WarmBody, Warmer, load_bodies

BODY = {"messages": [{"role": "system", "content": "Vous êtes serviable."}]}


async def warm_all(names: list[str]) -> list[str]:
    """Run one warm-up round over bodies with these names; the header values sent."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers[WARM_HEADER])
        return httpx.Response(200, json={"choices": []})

    warmer = Warmer([WarmBody(n, BODY) for n in names], "http://kvproxy.test", None, [])
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await warmer.warm(client, "start")
    assert warmer.rounds == 1
    return seen


async def test_non_ascii_names_are_warmed_and_the_rest_still_are() -> None:
    names = ["café.json", "системный.json", "plain.json", "bad-\udce9.json"]
    sent = await warm_all(names)
    assert len(sent) == 4 and all(value.isascii() for value in sent)
    assert [unquote(v) for v in sent[:3]] == names[:3]


def test_a_non_ascii_file_name_and_text_load(tmp_path: Path) -> None:
    path = tmp_path / "prompt-ü.json"
    path.write_bytes(json.dumps(BODY, ensure_ascii=False).encode("utf-8"))
    assert load_bodies([path]) == [WarmBody("prompt-ü.json", BODY)]

"""``kvproxy tokenize``: the token ids kvproxy computes for a text or a chat body, printed as
llama.cpp's ``llama-tokenize --ids`` prints them, and compared with a running server.

The tool a user reaches for when a count surprises them: it runs the very code kvproxy
predicts with (llama.cpp's tokenizer on the GGUF, the chat template rendered here), so a
difference from ``--upstream`` is a difference kvproxy's predictions would have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from proxy.backends.upstream import Upstream, make_session
from proxy.core.errors import ProxyError
from proxy.tokens.base import template_body
from proxy.tokens.llama import LlamaVocab
from proxy.tokens.local import LocalTokenizer
from proxy.tokens.server import ServerTokenizer
from proxy.tokens.templates import NORMALIZATIONS, Normalization, features


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tokenize",
        help="print the token ids kvproxy computes for a text or a chat body",
        description="Token ids as one JSON array, the same output as llama-tokenize --ids.",
    )
    p.add_argument("text", nargs="?", default=None,
                   help="the text to tokenize; '-' reads standard input")  # fmt: skip
    p.add_argument("--model", type=Path, required=True, metavar="GGUF",
                   help="the model's GGUF file (its vocabulary and chat template)")  # fmt: skip
    p.add_argument("--chat", type=Path, default=None, metavar="BODY.json",
                   help="a chat request body: its messages and tools rendered with the "
                   "model's template, then tokenized as llama-server tokenizes a "
                   "prompt")  # fmt: skip
    p.add_argument("--chat-template-file", type=Path, default=None, metavar="FILE",
                   help="a Jinja chat template instead of the GGUF's own")  # fmt: skip
    p.add_argument("--no-bos", action="store_true",
                   help="do not add the BOS (and EOS) tokens the vocabulary adds")  # fmt: skip
    p.add_argument("--no-parse-special", action="store_true",
                   help="tokenize special-token text (<|im_start|>) as plain text")  # fmt: skip
    p.add_argument("--no-escape", action="store_true",
                   help="take TEXT as it is: by default \\n, \\t, \\xHH and the like are "
                   "processed, as llama-tokenize does")  # fmt: skip
    p.add_argument("--upstream", default=None, metavar="URL",
                   help="a running llama-server: print its tokens' first difference from "
                   "kvproxy's on standard error (exit status 1 if they differ)")  # fmt: skip


ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("'"): b"'", ord('"'): b'"',
           ord("\\"): b"\\"}  # fmt: skip
HEX = b"0123456789abcdefABCDEF"


def process_escapes(text: str) -> str:
    """llama.cpp's ``string_process_escapes`` (common/common.cpp), which llama-tokenize
    applies to its prompt: known escapes and ``\\xHH`` replaced, others kept as written."""
    raw, out, i = text.encode("utf-8", "surrogatepass"), bytearray(), 0
    while i < len(raw):
        if raw[i] != ord("\\") or i + 1 >= len(raw):
            out.append(raw[i])
            i += 1
            continue
        code = raw[i + 1]
        if code in ESCAPES:
            out += ESCAPES[code]
            i += 2
        elif code == ord("x") and i + 3 < len(raw) and all(b in HEX for b in raw[i + 2 : i + 4]):
            out.append(int(raw[i + 2 : i + 4], 16))
            i += 4
        else:
            out += raw[i : i + 2]
            i += 2
    return out.decode("utf-8", "replace")


def offline_normalization(tok: LocalTokenizer, body: dict[str, Any]) -> Normalization:
    """Without a server to verify against, the first message normalization the template
    renders without an error (``--upstream`` verifies instead)."""
    for norm in NORMALIZATIONS:
        try:
            tok.render(body, norm)
        except Exception:  # a template raising on a shape it does not take
            continue
        return norm
    return Normalization()


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ; None when they are equal."""
    n = min(len(a), len(b))
    index = next((i for i in range(n) if a[i] != b[i]), n)
    return None if index == n and len(a) == len(b) else index


async def compare(
    url: str, tok: LocalTokenizer, vocab: LlamaVocab, body: dict[str, Any] | None, text: str,
    add_special: bool, parse_special: bool,
) -> tuple[list[int], list[int]]:  # fmt: skip
    """(kvproxy's tokens, the server's). For a chat body the template is verified against
    the server first, as ``kvproxy serve`` does at start, and a body whose features did not
    verify is rendered by the server, as in ``serve``."""
    session = make_session(10, 120)
    try:
        server = ServerTokenizer(Upstream(url=url.rstrip("/"), kind="llama", session=session))
        if body is None:
            data = await server.post("/tokenize", {"content": text, "add_special": add_special,
                                                    "parse_special": parse_special})  # fmt: skip
            theirs = [t if isinstance(t, int) else t["id"] for t in data.get("tokens", [])]
            return vocab.tokenize(text, add_special, parse_special), theirs
        tok.server = server
        await tok.verify()
        rendered = await server.render(template_body(body))
        norm = tok.verified.normalization(features(body))
        ours = tok.render(body, norm) if norm is not None else rendered
        return vocab.tokenize(ours, add_special, parse_special), await server.tokenize(rendered)
    finally:
        await session.close()


def run(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"kvproxy tokenize: {message}", file=sys.stderr)
        return 2

    if (args.chat is None) == (args.text is None):
        return fail("give a TEXT (or '-') or --chat BODY.json, one of the two")
    try:
        vocab = LlamaVocab.load(args.model.expanduser())
    except ProxyError as exc:
        return fail(exc.message)
    add_special, parse_special = not args.no_bos, not args.no_parse_special
    body: dict[str, Any] | None = None
    text: str | None = None
    try:
        template = (args.chat_template_file.read_text() if args.chat_template_file
                    else vocab.chat_template)  # fmt: skip
        if args.chat is not None:
            body = json.loads(args.chat.expanduser().read_text())
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                return fail(f"{args.chat}: not a chat body (an object with a messages list)")
        else:
            text = sys.stdin.read() if args.text == "-" else args.text
            text = text if args.no_escape else process_escapes(text)
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    if body is not None and not template:
        return fail(f"{args.model} has no chat template: pass --chat-template-file")
    tok = LocalTokenizer(vocab, template or "", ServerTokenizer(None))
    if args.upstream:
        try:
            ours, theirs = asyncio.run(compare(args.upstream, tok, vocab, body, text or "",
                                               add_special, parse_special))  # fmt: skip
        except (ProxyError, OSError) as exc:
            return fail(f"{args.upstream}: {exc}")
    else:
        theirs: list[int] | None = None
        if body is not None:
            try:
                rendered = tok.render(body, offline_normalization(tok, body))
            except Exception as exc:  # the template's own error (raise_exception)
                return fail(f"the chat template cannot render this body: {exc}")
            text = rendered
        ours = vocab.tokenize(text or "", add_special, parse_special)
    print(json.dumps(ours, separators=(", ", ": ")))
    return 0 if theirs is None else report_difference(ours, theirs)


def report_difference(ours: list[int], theirs: list[int]) -> int:
    """0 when kvproxy's tokens equal the server's, else 1 and where they first differ."""
    where = first_difference(ours, theirs)
    if where is None:
        print(f"server: equal ({len(theirs)} tokens)", file=sys.stderr)
        return 0
    mine = ours[where] if where < len(ours) else "end"
    server = theirs[where] if where < len(theirs) else "end"
    print(f"server: first difference at position {where}: kvproxy {mine}, server {server} "
          f"({len(ours)} vs {len(theirs)} tokens)", file=sys.stderr)  # fmt: skip
    return 1

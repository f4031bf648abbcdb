"""The local, key-less LLM: llama.cpp's OpenAI-compatible server run and supervised by vivavoce.

``vivavoce serve --local-llm`` starts it before the app and points the interviewer's LLM settings at
it; ``make local-llm`` installs what it needs. See ``supervisor`` (the child process's lifecycle),
``locate`` (finding the server and the model, with errors that say what to install) and ``child``
(the child's entry point, which dies with its parent).
"""

from api.local_llm.locate import INSTALL_HINT, LocalLLMError, LocalLLMUnavailable, LocalModel, resolve_model
from api.local_llm.supervisor import LLMState, LocalLLM, LocalLLMSettings, LocalLLMStartError

__all__ = [
    "INSTALL_HINT",
    "LLMState",
    "LocalLLM",
    "LocalLLMError",
    "LocalLLMSettings",
    "LocalLLMStartError",
    "LocalLLMUnavailable",
    "LocalModel",
    "resolve_model",
]

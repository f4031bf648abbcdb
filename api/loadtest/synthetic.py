"""Synthetic participants: a chat caller that answers as an LLM persona, to pilot a guide before launch.

The persona file's ``description`` says who the participant is ("a night-shift nurse
who commutes by train and is tired of delays"); with a model configured
(``--llm-base-url``/``--llm-model``, through the same OpenAI-compatible adapter as the
interviewer), every answer is written by the model from that description and the
interview so far. A model that fails or is slow gives way to the persona's canned
answers for that turn, so a pilot never stalls on the participant's side.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from api.loadtest.config import Persona
from runtime.interviewer import speech
from runtime.llm import ChatMessage, ChatModel, ChatRequest, LLMError
from runtime.llm.protocol import collect

log = logging.getLogger("vivavoce.loadtest")

HISTORY_LINES = 16  # of the interview so far


class SyntheticParticipant:
    def __init__(self, model: ChatModel, persona: Persona, *, model_name: str, timeout_s: float = 20.0) -> None:
        self.model = model
        self.persona = persona
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.answered = 0  # by the model
        self.fell_back = 0  # canned answers instead

    def _messages(self, history: Sequence[tuple[str, str]]) -> list[ChatMessage]:
        system = (
            "You are taking part in a research interview as this person: "
            f"{self.persona.description}\n"
            "Answer the interviewer's last question as that person would, in the first person, in one to four "
            "plain sentences. Do not ask the interviewer questions, do not mention being an AI, no lists or markup."
        )
        messages = [ChatMessage("system", system)]
        for role, text in list(history)[-HISTORY_LINES:]:
            # the model plays the participant: the interviewer's lines are its "user" turns
            messages.append(ChatMessage("user" if role == "assistant" else "assistant", text))
        return messages

    async def answer(self, history: Sequence[tuple[str, str]], rng: random.Random) -> str:
        request = ChatRequest(model=self.model_name, messages=self._messages(history), temperature=0.8, max_tokens=120)
        try:
            whole = await collect(self.model, request, timeout=self.timeout_s)
            text = speech.clean(whole.text)
            if text and not speech.problems(text, max_words=120):
                self.answered += 1
                return text
            log.info("synthetic answer unusable (%s); a canned one instead", speech.problems(text) or "empty")
        except LLMError as exc:
            log.info("synthetic participant's model failed (%s); a canned answer instead", exc)
        self.fell_back += 1
        return self.persona.answer(rng)

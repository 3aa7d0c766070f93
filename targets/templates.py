"""Question-writing templates and the parser for what a model writes back (pure functions).

Templates use Python `string.Template` syntax with Bread's two variables: `${numq}` (how many
questions) and `${prompt_u}` (the teacher prompt's text).
"""

from __future__ import annotations

import re
import string

from targets.config import PromptSpec

DEFAULT_ONESHOT_TEMPLATE = """You write realistic questions that users would ask an assistant.
The assistant has been given these instructions:

${prompt_u}

Write exactly ${numq} different questions a user might ask this assistant. Vary topic, length and tone.
Format as a numbered list, one question per line:
1. question1?
2. question2?
"""

PERSONA_TEMPLATE = """You are ${persona}.
You are talking to an assistant that has been given these instructions:

${prompt_u}

Write one question you would ask it, in your own voice. Reply with the question only."""

_MARKER = re.compile(r"^\s*(?:\(?\d{1,4}[.):]\)?|[-*•]|Q\d*[:.])\s+")


def prompt_text(prompt: PromptSpec) -> str:
    """The teacher prompt as plain text for `${prompt_u}`."""
    parts = []
    for message in prompt.messages:
        if isinstance(message.content, str):
            parts.append(message.content)
        elif isinstance(message.content, list):
            parts.extend(p.get("text", "") for p in message.content if isinstance(p, dict))
    return "\n\n".join(p for p in parts if p.strip())


def fill_oneshot(template: str, *, numq: int, prompt_u: str) -> str:
    return string.Template(template).safe_substitute(numq=numq, prompt_u=prompt_u)


def fill_persona(*, persona: str, prompt_u: str) -> str:
    return string.Template(PERSONA_TEMPLATE).safe_substitute(persona=persona, prompt_u=prompt_u)


def parse_question_list(text: str) -> list[str]:
    """Questions from a model's reply.

    When any line carries a list marker (`1.`, `2)`, `-`, `*`, `Q3:`), only marked lines count, so a
    preamble such as "Here are ten questions:" is not taken for a question; otherwise every non-empty
    line is one question.
    """
    lines = [line.strip() for line in _answer_part(text).splitlines() if line.strip()]
    marked = [_MARKER.sub("", line, count=1).strip() for line in lines if _MARKER.match(line)]
    questions = marked if marked else lines
    return [q.strip().strip('"').strip() for q in questions if q.strip().strip('"').strip()]


def _answer_part(text: str) -> str:
    """A reply without the reasoning that models such as Qwen3 or DeepSeek-R1 write first
    (`<think>…</think>`; the opening tag may be in the prompt); a reply cut off while still
    reasoning has no answer."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    return text.split("<think>", 1)[0]


def parse_single_question(text: str) -> str | None:
    questions = parse_question_list(text)
    return questions[0] if questions else None

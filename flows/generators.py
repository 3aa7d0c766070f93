"""Running stimulus generators: turn each Generator of a target into a list of distinct questions.

Generators that need a model (`oneshot_qs`, `persona`) go through the same engines as rollouts, with
seeds derived from the target seed, so a rerun asks the model the same things.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from targets import Generator, PromptSpec, derive_seed
from targets.personas import PERSONAS
from targets.templates import (
    DEFAULT_ONESHOT_TEMPLATE,
    fill_oneshot,
    fill_persona,
    parse_question_list,
    parse_single_question,
    prompt_text,
)

from flows.engines import ChatRequest, Engine, EngineError, Sampling

QUESTIONS_PER_REQUEST = 25  # a model lists 25 questions reliably; more per request drifts
MAX_ROUNDS = 6


@dataclass
class GeneratorOutput:
    questions: list[str]
    requested: int
    rounds: int = 0
    notes: list[str] = field(default_factory=list)


def run_generator(
    generator: Generator,
    *,
    index: int,
    teacher: PromptSpec,
    target_seed: int,
    engine_for: Callable[[str], Engine],
    default_model: str,
    read_template: Callable[[str], str],
    read_dataset: Callable[[str, str | None], list[str]],
    check_cancel: Callable[[], None] = lambda: None,
) -> GeneratorOutput:
    seed = derive_seed(target_seed, "generator", index, generator.seed if generator.seed is not None else "")
    wanted = generator.count
    if generator.type == "hardcoded":
        return GeneratorOutput(_distinct(generator.questions or [])[:wanted], wanted)
    if generator.type == "from_dataset":
        return _from_dataset(generator, wanted, seed, read_dataset)
    model = generator.model or default_model
    engine = engine_for(model)
    if generator.type == "oneshot_qs":
        template = generator.template_content
        if template is None and generator.template_path:
            template = read_template(generator.template_path)
        prompts = lambda remaining: [  # noqa: E731 - one line says what a round asks for
            fill_oneshot(template or DEFAULT_ONESHOT_TEMPLATE, numq=n, prompt_u=prompt_text(teacher))
            for n in _batches(remaining)
        ]
        return _ask_until(engine, generator, wanted, seed, prompts, parse_question_list, check_cancel, default_max_tokens=1024)
    rng = random.Random(seed)
    prompts = lambda remaining: [  # noqa: E731
        fill_persona(persona=rng.choice(PERSONAS), prompt_u=prompt_text(teacher)) for _ in range(remaining)
    ]
    single = lambda text: [q] if (q := parse_single_question(text)) else []  # noqa: E731
    return _ask_until(engine, generator, wanted, seed, prompts, single, check_cancel, default_max_tokens=128)


def _from_dataset(generator: Generator, wanted: int, seed: int, read_dataset) -> GeneratorOutput:
    assert generator.dataset is not None
    pool = _distinct(read_dataset(generator.dataset, generator.column))
    output = GeneratorOutput(random.Random(seed).sample(pool, min(wanted, len(pool))), wanted)
    if len(pool) < wanted:
        output.notes.append(f"dataset has {len(pool)} distinct questions; numq was {wanted}")
    return output


def _ask_until(engine, generator, wanted, seed, prompts_for, parse, check_cancel, *, default_max_tokens) -> GeneratorOutput:
    """Ask the model in rounds until `wanted` distinct questions exist or MAX_ROUNDS are spent
    (`check_cancel` runs before each round, so a long generator can be stopped)."""
    output = GeneratorOutput([], wanted)
    seen: set[str] = set()
    sampling = dict(temperature=generator.temperature if generator.temperature is not None else 1.0,
                    max_tokens=generator.max_tokens or default_max_tokens)
    while len(output.questions) < wanted and output.rounds < MAX_ROUNDS:
        check_cancel()
        prompts = prompts_for(wanted - len(output.questions))
        requests = [
            ChatRequest(
                key=i,
                messages=[{"role": "user", "content": text}],
                sampling=Sampling(n=1, seed=derive_seed(seed, output.rounds, i), **sampling),
            )
            for i, text in enumerate(prompts)
        ]
        replies = {r.key: r for r in engine.generate(requests)}
        output.rounds += 1
        if replies and all(reply.error for reply in replies.values()):
            raise EngineError(f"{generator.type}: every request to the model failed, e.g.: {next(iter(replies.values())).error}")
        for key in sorted(replies):  # request order, so the result does not depend on timing
            reply = replies[key]
            if reply.error:
                output.notes.append(f"round {output.rounds}: {reply.error}")
                continue
            for question in parse(reply.completions[0].text):
                if question not in seen and len(output.questions) < wanted:
                    seen.add(question)
                    output.questions.append(question)
    if len(output.questions) < wanted:
        output.notes.append(
            f"{generator.type}: made {len(output.questions)} of {wanted} distinct questions in {output.rounds} rounds"
        )
    return output


def _batches(total: int) -> list[int]:
    return [min(QUESTIONS_PER_REQUEST, total - start) for start in range(0, total, QUESTIONS_PER_REQUEST)]


def _distinct(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


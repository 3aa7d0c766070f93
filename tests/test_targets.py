"""targets/: names, config validation, template resolution, hashing, rendering (pure, no I/O)."""

import pytest

from targets import (
    PromptSpec,
    TargetConfig,
    TargetSpec,
    ValidationFailed,
    config_hash,
    parse,
    render_stimulus,
    resolve_target,
    validate_name,
)
from targets.render import rollout_context


@pytest.mark.parametrize("name", ["a", "my-repo_1.v2", "A" * 128, "x.y"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("a/b", "invalid character: '/'"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("", "must not be empty"),
        ("has space", "invalid character: ' '"),
        ("tab\there", "invalid character: '\\t'"),
        ("nul\x00", "invalid character: '\\x00'"),
        ("ü", "invalid character: 'ü'"),
        ("x" * 129, "too long"),
        (".hidden", "must not start with '.'"),
    ],
)
def test_invalid_names_say_why(name, fragment):
    with pytest.raises(ValidationFailed) as error:
        validate_name(name)
    assert fragment in error.value.message


def test_bread_message_for_slash():
    with pytest.raises(ValidationFailed, match="^Name contains invalid character: '/'$"):
        validate_name("a/b")


def test_u_v_accepted_on_input_never_emitted():
    config = resolve_target({"u": "teacher", "v": "student"})
    assert config.teacher_prompt == "teacher" and config.student_prompt == "student"
    dumped = config.model_dump()
    assert "u" not in dumped and "v" not in dumped


def test_u_conflicting_with_teacher_prompt_is_an_error():
    with pytest.raises(ValidationFailed, match="disagree"):
        resolve_target({"u": "a", "teacher_prompt": "b"})


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"bogus": 1}, "bogus: unknown field"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"num_traj_per_stimulus": 0}, "num_traj_per_stimulus"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"extra_kwargs": {"logit_bias": {}}}, "unsupported extra_kwargs ['logit_bias']"),
        ({"generators": [{"type": "nope"}]}, "generators.0.type"),
        ({"generators": [{"type": "hardcoded"}]}, "needs a non-empty 'questions'"),
        ({"generators": [{"type": "hardcoded", "questions": ["a"], "numq": 2}]}, "only 1 questions"),
        ({"generators": [{"type": "oneshot_qs"}]}, "needs 'numq'"),
        ({"generators": [{"type": "from_dataset", "numq": 3}]}, "needs 'dataset'"),
        ({"generators": [{"type": "oneshot_qs", "numq": 3, "template_content": "${numq} only"}]}, "missing: ['prompt_u']"),
        ({"generators": [{"type": "persona", "numq": 3, "colour": "red"}]}, "generators.0.colour: unknown field"),
    ],
)
def test_bad_config_values_are_named(overrides, fragment):
    with pytest.raises(ValidationFailed) as error:
        resolve_target(overrides)
    assert fragment in error.value.message


def test_template_deep_merges_dicts_and_replaces_lists():
    template = resolve_target(
        {
            "teacher_prompt": "t",
            "student_prompt": "s",
            "extra_kwargs": {"top_p": 0.9, "stop": ["a"]},
            "generators": [{"type": "hardcoded", "questions": ["q1", "q2"]}],
            "max_tokens": 64,
        }
    )
    config = resolve_target(
        {"extra_kwargs": {"top_k": 5, "stop": ["b"]}, "generators": [{"type": "persona", "numq": 4}], "max_tokens": None},
        template,
    )
    assert config.extra_kwargs == {"top_p": 0.9, "top_k": 5, "stop": ["b"]}
    assert [g.type for g in config.generators] == ["persona"]
    assert config.max_tokens == 64  # null override = not specified
    assert config.teacher_prompt == "t"


def test_hash_ignores_key_order_and_float_formatting():
    a = resolve_target({"teacher_prompt": "t", "student_prompt": "s", "temperature": 1, "extra_kwargs": {"top_p": 1, "top_k": 3}})
    b = resolve_target({"extra_kwargs": {"top_k": 3, "top_p": 1.0}, "temperature": 1.0, "student_prompt": "s", "teacher_prompt": "t"})
    c = resolve_target({"teacher_prompt": "t", "student_prompt": "s", "temperature": 0.7})
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_null_fields_mean_not_set_as_in_breads_schema():
    given = {"teacher_prompt": "t", "student_prompt": "s", "generators": [{"type": "hardcoded", "questions": ["q"]}]}
    nulls = {**given, "v": None, "num_traj_per_stimulus": None, "temperature": None, "max_concurrency": None,
             "extra_kwargs": None, "model_name": None,
             "generators": [{"type": "hardcoded", "questions": ["q"], "numq": None, "rollout_with_conditioned": None}]}
    assert resolve_target(nulls) == resolve_target(given)
    assert config_hash(resolve_target(nulls)) == config_hash(resolve_target(given))
    assert resolve_target({**given, "generators": None}).generators == []


def test_stim_and_rollout_parts():
    config = resolve_target({"teacher_prompt": "t", "student_prompt": "s", "model_name": "m", "max_tokens": 9})
    assert set(config.stim_part()) == {"generators", "teacher_prompt", "student_prompt"}
    assert config.rollout_part() == {
        "model_name": "m",
        "num_traj_per_stimulus": 1,
        "max_concurrency": 10,
        "temperature": 1.0,
        "max_tokens": 9,
    }


def test_target_spec_validates_names():
    with pytest.raises(ValidationFailed, match="invalid character: '/'"):
        parse(TargetSpec, {"target_name": "a/b", "template": "default"}, "target")
    with pytest.raises(ValidationFailed, match="invalid character"):
        parse(TargetSpec, {"target_name": "a", "template": "../x"}, "target")


def test_render_matches_bread_wire_shape():
    teacher = PromptSpec(
        prompt_name="t",
        messages=[
            {"role": "system", "content": "Be Yoda."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    student = PromptSpec(prompt_name="s", messages=[])
    row = render_stimulus("What is 2+2?", teacher=teacher, student=student)
    assert row["unconditioned_stimulus"]["messages"] == [
        {"role": "system", "content": "Be Yoda."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert row["unconditioned_stimulus"]["tools"] == teacher.tools
    assert row["conditioned_stimulus"] == {"messages": [{"role": "user", "content": "What is 2+2?"}]}
    assert "trajectory_override_stimulus" not in row
    assert rollout_context(row) is row["unconditioned_stimulus"]


def test_rollout_with_conditioned_samples_the_student_side():
    teacher = PromptSpec(prompt_name="t", messages=[{"role": "system", "content": "T"}])
    student = PromptSpec(prompt_name="s", messages=[{"role": "system", "content": "S"}])
    row = render_stimulus("q", teacher=teacher, student=student, rollout_with_conditioned=True)
    assert rollout_context(row)["messages"][0]["content"] == "S"


def test_target_config_rejects_unknown_fields_directly():
    with pytest.raises(ValidationFailed, match="unknown field"):
        parse(TargetConfig, {"nope": True}, "target config")


@pytest.mark.parametrize(
    "reply, questions",
    [
        ("Here are three questions:\n1. How hot?\n2) How long?\n- \"Why rye?\"\n", ["How hot?", "How long?", "Why rye?"]),
        ("How hot?\n\nHow long?", ["How hot?", "How long?"]),
        ("<think>\nThe user wants questions.\n1. not this\n</think>\n1. How hot?\n2. How long?", ["How hot?", "How long?"]),
        ("Reasoning without the opening tag (it was in the prompt).\n</think>\n\nWhy rye?", ["Why rye?"]),
        ("<think>\nStill thinking when max_tokens ran out\n1. half a thought", []),
        ("", []),
    ],
)
def test_question_lists_parse_out_of_model_replies(reply, questions):
    from targets.templates import parse_question_list, parse_single_question

    assert parse_question_list(reply) == questions
    assert parse_single_question(reply) == (questions[0] if questions else None)

from __future__ import annotations

import json
import threading

from flows.engines import tiny_model
from flows.engines.model_cache import resolve_model
from flows.engines.tiny_model import build_tiny_model, tiny_model_path


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_two_builds_are_byte_identical(tmp_path):
    a = _files(build_tiny_model(tmp_path / "a"))
    b = _files(build_tiny_model(tmp_path / "b"))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= set(a)  # fmt: skip
    assert a == b


def test_tokenizer_config_and_template_agree(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert config["vocab_size"] >= len(tok) == tiny_model.VOCAB_SIZE
    assert config["head_dim"] == 32 and config["num_hidden_layers"] == 2
    assert config["max_position_embeddings"] == 2048
    assert tok.eos_token_id == config["eos_token_id"] == gen["eos_token_id"][0]
    assert tok.pad_token_id == config["pad_token_id"] == gen["pad_token_id"]
    assert tok.bos_token_id == config["bos_token_id"] == gen["bos_token_id"]

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": [{"type": "text", "text": "More?"}]},
    ]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi.<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_tools = tok.apply_chat_template(messages, tools=tools, tokenize=False)
    assert "lookup" in with_tools and not with_tools.endswith("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == text


def test_cached_build_is_shared_and_race_safe(tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEHOUSE_MODEL_CACHE", str(tmp_path))
    paths, errors = [], []

    def build():
        try:
            paths.append(tiny_model_path())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = tmp_path / tiny_model.TINY_MODEL_NAME
    assert paths == [final, final]
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # no temp dirs left over
    assert resolve_model("tiny-random") == str(final)
    assert resolve_model("some/model") == "some/model"

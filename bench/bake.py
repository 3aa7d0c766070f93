"""Bake step throughput: our KL bake (stored or online teacher) vs plain SFT vs TRL's SFTTrainer.

    python bench/bake.py [--trajectories 96] [--steps 12] [--warmup 2] [--batch 4] [--max-tokens 48]
                         [--layers 4] [--hidden 256] [--model PATH]

The rows: a rollout of --trajectories answers (--max-tokens each, fake engine: words, no model needed)
written by the real stim and rollout jobs to a temp local store and read back through the page
reader. The model: a Llama built in code (--layers, --hidden; random weights, the tiny model's
tokenizer) unless --model names a local folder. The LoRA: r=16, alpha=32, all-linear, AdamW lr 1e-4.

Measured, each on a fresh model, --warmup steps untimed then --steps timed, batch --batch:
  kl_stored  `flows.trainer.Trainer.step` with the rollout's stored top-20 as the teacher (what a bake
             does when the rollout model is its parent): student forward and backward only, KL over
             the top 20 plus a tail bucket at the response positions;
  kl_online  the same step with the teacher computed: a forward pass with the adapter off on the
             teacher context first (what a bake does for any other rollout), same top-20 KL;
  sft        the same trainer's model and data, cross-entropy on the response tokens (no teacher);
  trl_sft    TRL's `SFTTrainer` on the student chats as prompt/completion pairs (completion-only loss),
             same LoRA, batch and learning rate (the tool a user would otherwise pick).
Printed: seconds per step (median) and response tokens per second, with the ratios of both KL steps
to sft and to trl_sft, all from this one run. Not a test: machines are noisy, compare ratios. (The
fake rollout's stored top-K are word ids, not the model's: the arithmetic and shapes are a real
bake's, the values are not, which timing does not depend on.)

    python bench/bake.py --rss-sizes 1000,20000

Memory instead: for each size a fresh child process writes a fake rollout of that many trajectories
and runs a whole bake on the tiny model (one epoch, batch 16), printing its peak RSS (ru_maxrss)
before and after the bake; the parent prints the peaks and their growth across sizes (aim: flat,
within 200 MB, since the bake holds one page of rows per dataset).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_target  # noqa: E402

LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "lora_dropout": 0.0}
LEARNING_RATE = 1e-4


def rollout_rows(folder: str, trajectories: int, max_tokens: int) -> list[dict]:
    from flows.engines.fake import FakeEngine
    from flows.rollout import run_rollout
    from flows.stim import run_stim
    from repo_store import Store

    class Engines:  # the fake engine for every model name
        def __call__(self, model, **options):
            return FakeEngine(model)

        def close(self):
            pass

    ws = Store(folder).workspace()
    questions = [f"Where did captain {i} bury the treasure, and why there?" for i in range(trajectories // 2)]
    make_target(ws, "bench", "t", model="fake", questions=questions, num_traj_per_stimulus=2, max_tokens=max_tokens)
    run_stim(ws, "bench", "t", engines=Engines())
    run_rollout(ws, "bench", "t", engines=Engines())
    return [_as_tokenised(row) for row in ws.read_page("bench", "t", "rollout", offset=0, limit=1000, include_tokens=True).rows]


@functools.cache
def _tiny_tokenizer():
    from transformers import AutoTokenizer

    from flows.engines.tiny_model import tiny_model_path

    return AutoTokenizer.from_pretrained(tiny_model_path())


def _as_tokenised(row: dict) -> dict:
    """The fake engine's token ids are its words; give every side the same tokens instead: the text
    as the tiny model's tokenizer splits it (what TRL trains on), with a stored top-20 per token."""
    import math

    tokenizer = _tiny_tokenizer()
    ids = tokenizer(row["response"]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {**row, "response_token_ids": ids,
            "teacher_top_ids": [[(i + r) % len(tokenizer) for r in range(20)] for i in ids],
            "teacher_top_logprobs": [[-math.log(2) * (r + 1) for r in range(20)] for _ in ids]}


def build_model(folder: str, layers: int, hidden: int) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from flows.engines.tiny_model import tiny_model_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                         num_key_value_heads=max(hidden // 64, 1), tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def trainer_for(model_path: str, batch: int, teacher: str = "auto"):
    from flows.trainer import Trainer
    from targets import parse
    from targets.bake import BakeConfig

    config = parse(BakeConfig, {"micro_batch_size": batch, "optimizer": {"learning_rate": LEARNING_RATE},
                                "model": {"baked_adapter_config": LORA}, "teacher": teacher}, "bake config")
    # The rows were rolled out by "fake": naming it the parent makes their stored top-K the teacher.
    return Trainer(model_path, config, parent_model="fake")


def time_steps(step, batches, warmup: int) -> list[float]:
    seconds = []
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        step(batch)
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
    return seconds


def measure_ours(model_path: str, rows: list[dict], args, kind: str) -> tuple[list[float], int]:
    import torch

    trainer = trainer_for(model_path, args.batch, teacher="online" if kind == "kl_online" else "auto")
    examples = [trainer.example(row) for row in rows]
    assert all((e.teacher_top_ids is not None) == (kind != "kl_online") for e in examples)
    batches = [examples[(i * args.batch) % len(examples):][: args.batch] for i in range(args.warmup + args.steps)]

    def sft(batch) -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        logits = trainer.response_logits([e.student_context for e in batch], [e.response for e in batch])
        targets = torch.tensor([t for e in batch for t in e.response])
        torch.nn.functional.cross_entropy(logits, targets).backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, 1.0)
        trainer.optimizer.step()

    step = sft if kind == "sft" else (lambda batch: trainer.step([batch]))
    tokens = sum(len(e.response) for e in examples) / len(examples)
    return time_steps(step, batches, args.warmup), tokens


def measure_trl(model_path: str, rows: list[dict], args) -> list[float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    pairs = [{"prompt": row["conditioned_stimulus"]["messages"],
              "completion": [{"role": "assistant", "content": row["response"]["content"]}]} for row in rows]
    seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, args_, state, *_, **__):
            if state.global_step > args.warmup:
                seconds.append(time.perf_counter() - self.started)

    with tempfile.TemporaryDirectory() as output:
        config = SFTConfig(output_dir=output, per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
                           learning_rate=LEARNING_RATE, lr_scheduler_type="constant", logging_steps=10_000,
                           save_strategy="no", report_to=[], use_cpu=True, completion_only_loss=True,
                           dataloader_num_workers=0, max_length=2048, max_grad_norm=1.0, seed=0,
                           # Same precision as ours: TRL otherwise trains in bf16, slow on most CPUs.
                           bf16=False, model_init_kwargs={"dtype": "float32"})
        trainer = SFTTrainer(model=model_path, args=config, train_dataset=Dataset.from_list(pairs),
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA), callbacks=[StepTimer()])
        trainer.train()
    return seconds


def rss_child(size: int) -> None:
    import resource

    from flows.bake import run_bake
    from repo_store import Store
    from targets.bake import BakeSpec

    with tempfile.TemporaryDirectory(prefix="bench-bake-rss-") as scratch:
        rows_folder = f"{scratch}/data"
        rollout_rows(rows_folder, size, max_tokens=16)
        ws = Store(rows_folder).workspace()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # The rollout lives in repo "bench"; bake it there (its base model is "fake": name the parent).
        ws.create_bake("bench", BakeSpec(bake_name="b", overrides={
            "datasets": [{"target": "t"}], "micro_batch_size": 16, "model": {"parent_model_name": "tiny-random"},
            "checkpoint": [{"save_every_n_steps": 1000}]}))
        started = time.perf_counter()
        status = run_bake(ws, "bench", "b")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"size": size, "status": status.status, "rss_before_mb": round(before), "rss_after_mb": round(after),
                      "seconds": round(time.perf_counter() - started, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trajectories", type=int, default=96)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--model", default=None)
    parser.add_argument("--rss-sizes", default=None, help="comma-separated trajectory counts: measure memory instead")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child)
    if args.rss_sizes:
        import subprocess

        peaks = []
        for size in [int(n) for n in args.rss_sizes.split(",")]:
            done = subprocess.run([sys.executable, __file__, "--rss-child", str(size)], capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            peaks.append(result["rss_after_mb"])
            print(json.dumps(result))
        print(json.dumps({"peak_rss_growth_mb": peaks[-1] - peaks[0]}))
        return
    with tempfile.TemporaryDirectory(prefix="bench-bake-") as scratch:
        rows = rollout_rows(f"{scratch}/data", args.trajectories, args.max_tokens)
        model_path = args.model or build_model(f"{scratch}/model", args.layers, args.hidden)
        results = {}
        tokens_per_example = 0.0
        for kind in ("kl_stored", "kl_online", "sft"):
            seconds, tokens_per_example = measure_ours(model_path, rows, args, kind)
            results[kind] = statistics.median(seconds)
        results["trl_sft"] = statistics.median(measure_trl(model_path, rows, args))
    tokens_per_step = tokens_per_example * args.batch
    for kind, seconds in results.items():
        print(f"{kind:>10}: {seconds * 1000:8.1f} ms/step  {tokens_per_step / seconds:8.0f} response tok/s")
    print(json.dumps({
        "kl_stored/sft": round(results["sft"] / results["kl_stored"], 3),
        "kl_stored/trl_sft": round(results["trl_sft"] / results["kl_stored"], 3),
        "kl_online/sft": round(results["sft"] / results["kl_online"], 3),
        "kl_online/trl_sft": round(results["trl_sft"] / results["kl_online"], 3),
        "sft/trl_sft": round(results["trl_sft"] / results["sft"], 3),
        "response_tokens_per_example": round(tokens_per_example, 1), "batch": args.batch,
        "model": args.model or f"llama {args.layers} layers x {args.hidden} (random)",
    }))


if __name__ == "__main__":
    main()

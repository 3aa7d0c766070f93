"""Quality at equal steps: a KL bake vs an SFT bake on the same pirate trajectories (smollm2-135m).

    python bench/bake_quality.py [--epochs 1] [--data FOLDER]

The data: the demo's target (targets/examples/demo.yaml: a pirate teacher prompt, an empty student
prompt, 48 questions x 4 answers of 64 tokens) rolled out by the real stim and rollout jobs with
in-process vLLM into --data (reused when it is already there). Both bakes start from the same
adapter initialisation and see the same batches in the same order, with the demo's LoRA, learning
rate and batch:
  kl    the bake's own step: KL(teacher ‖ student) over the stored top-20 plus a tail bucket;
  sft   cross-entropy on the sampled response tokens under the student context (top-1 imitation).
Then both are scored on held-out questions (the demo's, never trained on), no system prompt, by
`flows.evaluate.compare_before_after`: the held-out KL(teacher ‖ student) per token of the teacher's
own greedy answer (full vocabulary), and the rate of pirate words in greedy answers. The paper's claim
(arXiv 2409.13697): matching the teacher's distribution generalises better than imitating its samples.
About 8 minutes on 2 cores the first time (rollout), 5 after. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bakehouse.demo import HELD_OUT_QUESTIONS, apply_locally, pirate_word_rate  # noqa: E402
from bakehouse.specs import EXAMPLES  # noqa: E402
from flows.bake import _Training  # noqa: E402
from flows.evaluate import compare_before_after  # noqa: E402
from flows.rollout import run_rollout  # noqa: E402
from flows.runtime import Engines  # noqa: E402
from flows.stim import run_stim  # noqa: E402
from repo_store import Store  # noqa: E402


def rolled_out(folder: str):
    ws = Store(folder).workspace()
    repo, targets, bakes = apply_locally(ws, EXAMPLES / "demo.yaml")
    engines = Engines()
    try:
        run_stim(ws, repo, targets[0], engines=engines)
        assert run_rollout(ws, repo, targets[0], engines=engines).status == "complete"
    finally:
        engines.close()
    bake, _ = ws.create_bake(repo, bakes[0])
    return ws, repo, bake


def train(ws, repo: str, bake, method: str, epochs: int) -> tuple[dict[str, bytes], float]:
    import torch

    training = _Training.prepare(ws, repo, bake.bake_name, rank=0, world=1)
    trainer = training.trainer

    def sft(micro_batches) -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        batch = [e for micro in micro_batches for e in micro if e.response]
        logits = trainer.response_logits([e.student_context for e in batch], [e.response for e in batch])
        torch.nn.functional.cross_entropy(logits, torch.tensor([t for e in batch for t in e.response])).backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, 1.0)
        trainer.optimizer.step()

    started, steps = time.perf_counter(), 0
    for _ in range(epochs):  # the bake's own batches (its epochs setting is 1: repeat it)
        for _, micro_batches in training.batches(0):
            if method == "kl":
                trainer.step(micro_batches)
            else:
                sft(micro_batches)
            steps += 1
    print(f"{method}: {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    return trainer.checkpoint_files(steps, training.parent), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", default=None, help="storage folder (kept, so a second run skips the rollout)")
    args = parser.parse_args()
    folder = args.data or tempfile.mkdtemp(prefix="bench-bake-quality-")
    ws, repo, bake = rolled_out(folder)
    first = ws.read_page(repo, bake.config.datasets[0].target, "rollout", offset=0, limit=1).rows[0]
    teacher, student = first["unconditioned_stimulus"]["messages"][:-1], first["conditioned_stimulus"]["messages"][:-1]
    parent = bake.config.model.parent_model_name or ws.get_repo(repo).base_model
    from flows.models import model_folder

    results = {}
    for method in ("kl", "sft"):
        files, seconds = train(ws, repo, bake, method, args.epochs)
        scored = compare_before_after(model_folder(ws, parent), parent, bake.config, files, teacher, student,
                                      HELD_OUT_QUESTIONS)
        results[method] = {
            "held_out_kl_before": round(scored.kl_before, 4), "held_out_kl_after": round(scored.kl_after, 4),
            "pirate_rate_after": round(sum(pirate_word_rate(a.after) for a in scored.answers) / len(scored.answers), 3),
            "pirate_rate_teacher": round(sum(pirate_word_rate(a.teacher) for a in scored.answers) / len(scored.answers), 3),
            "train_seconds": round(seconds),
        }
        print(json.dumps({method: results[method]}), flush=True)
    print(json.dumps({"held_out_kl_after sft/kl": round(results["sft"]["held_out_kl_after"] / results["kl"]["held_out_kl_after"], 2),
                      "epochs": args.epochs, "data": folder}))


if __name__ == "__main__":
    main()

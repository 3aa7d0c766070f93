"""The bake trainer: a LoRA adapter (peft) on the parent model, trained with the bake loss.

One trajectory is two token sequences that end in the same response tokens: the teacher context
(teacher prompt + question) and the student context (student prompt + question). The response is the
token ids the rollout sampled (`response_token_ids`), never its text tokenised again (that need not
give the sampled tokens back); only rows recorded without ids fall back to tokenising the text.

The student is the model with the adapter on the student sequence. The teacher is, per row:
- stored: the top-K the rollout recorded at each response token, when the rollout context was the
  teacher's and its model is this bake's parent (the same distribution, no teacher forward pass);
- online: the same frozen model with the adapter disabled on the teacher sequence, otherwise.
Only the response positions' hidden states go through the output layer, so no
`[batch, tokens, vocab]` tensor exists for the prompts.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import os
import random
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from repo_store.bakes import ADAPTER_ARCHIVE, ADAPTER_FILES, STATE_FILE
from targets.bake import BakeConfig
from targets.bake_loss import forward_kl, teacher_top_k, top1_agreement, top_k_forward_kl


@dataclass(frozen=True)
class Example:
    """One trajectory as token ids: both contexts, the response they share and, where the rollout's
    record is this bake's teacher, the teacher's top-K per response token (else None: forward pass)."""

    teacher_context: list[int]
    student_context: list[int]
    response: list[int]
    teacher_top_ids: list[list[int]] | None = None
    teacher_top_logprobs: list[list[float]] | None = None


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean KL per response token over the optimizer step
    top1_agreement: float
    tokens: int
    grad_norm: float
    seconds: float
    learning_rate: float  # the rate this step used (the schedule moves on after it)


class Trainer:
    """One process's share of the training. With `world` > 1 (a `torch.distributed` group is up),
    every process sees every example of a step and computes its slice (`rank::world`); gradients and
    sums are added over the group, so each step equals the single-process step."""

    def __init__(self, model_path: str, config: BakeConfig, *, parent_model: str | None = None, total_steps: int = 1,
                 rank: int = 0, world: int = 1):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from flows.engines.device import cuda_available, train_settings

        self.device = train_settings(cuda=cuda_available(), rank=rank)
        self.config = config
        # Rows rolled out by this model (their `model`) carry a usable stored teacher.
        self.parent_model = parent_model
        self.rank, self.world = rank, world
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        torch.manual_seed(config.seed)  # the adapter's initial weights
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(self.device.device)
        if self.device.gradient_checkpointing:
            base.gradient_checkpointing_enable()
            base.enable_input_require_grads()  # the frozen embeddings' output must carry grad for peft
        adapter = config.model.baked_adapter_config
        try:
            self.model = get_peft_model(base, LoraConfig(
                r=adapter.r, lora_alpha=adapter.lora_alpha, target_modules=adapter.target_modules,
                lora_dropout=adapter.lora_dropout, bias=adapter.bias, task_type="CAUSAL_LM",
            ))
        except ValueError as error:  # peft names the modules the model lacks
            raise ValueError(f"model.baked_adapter_config.target_modules: {error}") from None
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        opt = config.optimizer
        self.optimizer = torch.optim.AdamW(self.params, lr=opt.learning_rate, betas=opt.betas, weight_decay=opt.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(config.scheduler.name, self.optimizer, num_warmup_steps=config.scheduler.warmup_steps,
                                       num_training_steps=max(total_steps, 1))

    # -- data ----------------------------------------------------------------------------------

    def example(self, row: dict[str, Any]) -> Example:
        """Token ids of one rollout row (read with its token columns); both sequences end in the
        same response ids, so teacher and student score exactly the same tokens."""
        def context(messages: list[dict[str, Any]]) -> list[int]:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

        response = row.get("response")
        if row.get("error") or not response:  # a failed trajectory: nothing to learn from, no tokens
            return Example([], [], [])
        ids = row.get("response_token_ids")
        if ids is None:  # recorded without ids (an older rollout, a server that returns none)
            ids = self.tokenizer(response.get("content") or "", add_special_tokens=False)["input_ids"]
            if row.get("finish_reason", "stop") == "stop" and self.tokenizer.eos_token_id is not None:
                ids = [*ids, self.tokenizer.eos_token_id]  # the model chose to stop: learn that too
        teacher = context(row["unconditioned_stimulus"]["messages"])
        student = context(row["conditioned_stimulus"]["messages"])
        keep = max(self.config.max_length - max(len(teacher), len(student)), 0)
        top_ids, top_logprobs = self._stored_teacher(row, ids)
        return Example(teacher, student, list(ids[:keep]),
                       top_ids[:keep] if top_ids is not None else None,
                       top_logprobs[:keep] if top_logprobs is not None else None)

    def _stored_teacher(self, row: dict[str, Any], ids: list[int]) -> tuple[list | None, list | None]:
        """The rollout's top-K when it is this bake's teacher: recorded under the teacher context
        (no override) by the parent model, one entry per response token (else a forward pass)."""
        top_ids, top_logprobs = row.get("teacher_top_ids"), row.get("teacher_top_logprobs")
        if (not self.config.uses_stored_teacher or not top_ids or row.get("response_token_ids") is None
                or "trajectory_override_stimulus" in row or row.get("model") != self.parent_model):
            return None, None
        if not len(top_ids) == len(top_logprobs) == len(ids):
            raise ValueError(f"stored teacher top-K of stimulus {row.get('stimulus_id')} trajectory "
                             f"{row.get('trajectory_id')} does not line up with its {len(ids)} response tokens")
        return top_ids, top_logprobs

    # -- training ------------------------------------------------------------------------------

    def response_logits(self, contexts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        """Logits predicting each response token, all rows concatenated: [response tokens, vocab]."""
        width = max(len(c) + len(r) for c, r in zip(contexts, responses, strict=True))
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(contexts), width), dtype=torch.long)
        positions = []
        for i, (c, r) in enumerate(zip(contexts, responses, strict=True)):
            input_ids[i, : len(c) + len(r)] = torch.tensor(c + r)
            attention[i, : len(c) + len(r)] = 1
            # The logits at position p predict token p + 1: response token j is predicted at len(c) + j - 1.
            positions += [(i, len(c) + j - 1) for j in range(len(r))]
        causal_lm = self.model.get_base_model()
        device, autocast = self.device.device, self.device.autocast_dtype
        precision = (torch.autocast(device_type="cuda", dtype=getattr(torch, autocast)) if autocast
                     else contextlib.nullcontext())
        with precision:
            hidden = causal_lm.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
            rows, cols = zip(*positions, strict=True) if positions else ((), ())
            return causal_lm.lm_head(hidden[list(rows), list(cols)])

    def step(self, micro_batches: list[list[Example]]) -> StepResult:
        """One optimizer step over `micro_batches` (gradient accumulation): loss = the mean KL
        over every response token of the step, whatever the micro-batch sizes."""
        started = time.perf_counter()
        tokens = sum(len(e.response) for batch in micro_batches for e in batch)
        total_kl, agree = 0.0, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for batch in micro_batches:
            mine = [e for e in batch[self.rank::self.world] if e.response]
            # Rows needing a teacher forward pass first, then rows with a stored teacher: one
            # student forward pass covers both, split at the first stored row's tokens.
            online = [e for e in mine if e.teacher_top_ids is None]
            stored = [e for e in mine if e.teacher_top_ids is not None]
            if not mine:
                continue
            student = self.response_logits([e.student_context for e in online + stored], [e.response for e in online + stored])
            split = sum(len(e.response) for e in online)
            kls, teacher_top1 = [], []
            if online:
                with torch.no_grad(), self.model.disable_adapter():
                    teacher = self.response_logits([e.teacher_context for e in online], [e.response for e in online])
                top_ids, top_logprobs = teacher_top_k(teacher, min(self.config.teacher_top_k, teacher.shape[-1]))
                if self.config.kl == "full":
                    kls.append(forward_kl(teacher, student[:split]))
                else:
                    kls.append(top_k_forward_kl(top_ids, top_logprobs, student[:split]))
                teacher_top1.append(top_ids[:, 0])
            if stored:
                k = min(len(ids) for e in stored for ids in e.teacher_top_ids)
                top_ids = torch.tensor([ids[:k] for e in stored for ids in e.teacher_top_ids], dtype=torch.long,
                                       device=student.device)
                top_logprobs = torch.tensor([lp[:k] for e in stored for lp in e.teacher_top_logprobs],
                                            dtype=torch.float32, device=student.device)
                kls.append(top_k_forward_kl(top_ids, top_logprobs, student[split:]))
                teacher_top1.append(top_ids[:, 0])
            kl = torch.cat(kls)
            (kl.sum() / tokens).backward()
            total_kl += kl.detach().sum().item()
            agree += top1_agreement(torch.cat(teacher_top1)[:, None], student.detach()).sum().item()
        if self.world > 1:
            total_kl, agree = self._sum_over_processes(total_kl, agree)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm=1.0).item() if tokens else 0.0
        learning_rate = self.learning_rate
        self.optimizer.step()
        self.scheduler.step()
        return StepResult(total_kl / max(tokens, 1), agree / max(tokens, 1), tokens, grad_norm,
                          time.perf_counter() - started, learning_rate)

    def _sum_over_processes(self, *values: float) -> list[float]:
        """Add every process's gradients (each already divided by the step's global token count)
        and the given sums; a process with no examples this step adds zeros."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.flatten() for g in grads])  # one collective, not one per tensor
        dist.all_reduce(flat)
        for p, summed in zip(self.params, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = summed.view_as(p)
        sums = torch.tensor(values, dtype=torch.float64, device=flat.device)
        dist.all_reduce(sums)
        return sums.tolist()

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint_files(self, step: int, parent_model: str) -> dict[str, bytes]:
        """The adapter as peft saves it (loadable with `PeftModel.from_pretrained`) and the
        training state a resume needs: optimizer, learning-rate schedule, RNGs and the step (the data cursor)."""
        with tempfile.TemporaryDirectory() as folder:
            self.model.save_pretrained(folder)
            files = {name: open(os.path.join(folder, name), "rb").read() for name in ADAPTER_FILES}
        adapter_config = json.loads(files["adapter_config.json"])
        adapter_config["base_model_name_or_path"] = parent_model  # the name users know, not a cache path
        files["adapter_config.json"] = json.dumps(adapter_config, indent=2).encode()
        files[ADAPTER_ARCHIVE] = _tar_gz({name: files[name] for name in ADAPTER_FILES})
        state = io.BytesIO()
        torch.save({"step": step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate()}, state)
        files[STATE_FILE] = state.getvalue()
        return files

    def load_checkpoint(self, files: dict[str, bytes]) -> int:
        """Restore adapter, optimizer and RNGs; returns the step the checkpoint was taken after."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load

        set_peft_model_state_dict(self.model, load(files["adapter_model.safetensors"]))
        state = torch.load(io.BytesIO(files[STATE_FILE]), weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # checkpoints from before schedules were kept start at a constant rate
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        return int(state["step"])


def _tar_gz(files: dict[str, bytes]) -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()

"""BALTO trainer: grouped rollouts, token advantages, clipped surrogate updates, a JSONL step log.

One step (seed 003, §3): sample G responses for each of the step's prompts with the current
policy, label them with the claim verifier, compute token advantages with the chosen scheme,
take the old-policy and reference log-probs with no-grad forwards, then make optimizer updates
over mini-batches of prompts (gradients accumulate over a mini-batch's prompts) on the clipped
surrogate of Eq. 7-8. The policy is LoRA (peft, the adapters disabled give the reference) or
the full model (a frozen copy is the reference).
"""

from __future__ import annotations

import copy
import random
import sys
import time
from collections.abc import Sequence as SequenceOf
from pathlib import Path

import torch
from peft import PeftModel
from pydantic import BaseModel, Field
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from balto.advantages import (
    add_response_terms,
    compute_advantages,
    content_rewards,
    gold_rewards,
    grpo_density_rewards,
    hold_hallucination_penalty,
    length_charges,
)
from balto.config import TrainConfig
from balto.loss import clipped_surrogate_loss, kl_to_reference, sequence_logprobs
from balto.rollout import (
    GroupTensors,
    Labeller,
    PoolLabeller,
    Prompt,
    RolloutGroup,
    VerifierLabeller,
    group_tensors,
    label_groups,
    sample_groups,
)
from balto.rollout_policy import RolloutPolicy
from engine.model_runner import ModelRunner, pick_device
from engine.sampling import SamplingParams
from finetune.run import (
    LOG_FILE,
    SUMMARY_FILE,
    append_log,
    halueval_lines,
    load_float32,
    lora_model,
    resolve_base,
    save_adapter,
    trained_with,
    write_summary,
)
from groundedqa.metrics import gold_in_answer
from groundedqa.prompts import grounded_prompt_ids


class StepLog(BaseModel):
    """One line of the training log (JSONL), for one step of ``G x prompts_per_step`` rollouts."""

    step: int
    reward: float = Field(description="Mean GRPO_D reward (share of supported claims).")
    faithful: float = Field(description="Share of responses without an unsupported claim.")
    n_H: int = Field(description="Hallucinated tokens in the step's responses.")
    n_F: int = Field(description="Faithful tokens in the step's responses.")
    loss: float = Field(description="Mean surrogate loss over the step's optimizer updates.")
    grad_norm: float = Field(description="Mean gradient norm before clipping over the updates.")
    kl: float = Field(description="KL(old policy || start policy) per token, k3 estimator.")
    clip_fraction: float
    seconds: float
    updates: int = Field(description="Optimizer updates made (0 when every advantage was 0).")
    response_tokens: float = Field(description="Mean response length in training tokens.")
    truncated: float = Field(0.0, description="Share of responses cut at max_new_tokens.")
    gold: float | None = Field(
        None, description="Share of responses containing the gold answer (None: not logged)."
    )
    retokenized: float = Field(description="Share of responses whose re-tokenization differs.")
    rollout_seconds: float
    label_seconds: float


def group_logprobs(
    lm: PreTrainedModel, prompt_ids: list[int], response_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Log-probabilities ``[G, T]`` of a group's response tokens after one shared prompt.

    The prompt runs once (batch 1); its KV cache is repeated G times and the responses run
    against it, so gradients reach the prompt positions too. Equal to a full forward over each
    ``prompt + response`` (causal attention); positions outside ``mask`` are right padding.
    """
    device = lm.lm_head.weight.device
    groups, width = response_ids.shape
    response_ids = response_ids.to(device)
    prompt = lm.model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
    logits = lm.lm_head(prompt.last_hidden_state[:, -1:]).expand(groups, -1, -1)
    if width > 1:
        cache = prompt.past_key_values
        cache.batch_repeat_interleave(groups)
        n_prompt = len(prompt_ids)
        attention = torch.cat(
            [
                torch.ones(groups, n_prompt, dtype=torch.long, device=device),
                mask[:, :-1].long().to(device),
            ],
            dim=1,
        )
        positions = torch.arange(n_prompt, n_prompt + width - 1, device=device).expand(groups, -1)
        rest = lm.model(
            input_ids=response_ids[:, :-1],
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        logits = torch.cat([logits, lm.lm_head(rest.last_hidden_state)], dim=1)
    return sequence_logprobs(logits, response_ids)


def contains_gold(group: RolloutGroup) -> torch.Tensor:
    """``[G]`` booleans: which responses contain the prompt's gold answer (none without one)."""
    return torch.tensor([gold_in_answer(r.text, group.prompt.answer) for r in group.responses])


def halueval_prompts(
    tokenizer: PreTrainedTokenizerBase, first_line: int, limit: int, max_prompt_tokens: int
) -> tuple[list[Prompt], int]:
    """Grounded prompts of HaluEval dev lines ``first_line .. first_line + limit - 1``.

    Returns the prompts (key: the line number) and how many were skipped for being longer
    than ``max_prompt_tokens``.
    """
    from groundedqa.halueval import load_dev_lines

    items = load_dev_lines(first_line, first_line + limit - 1)
    prompts = [
        Prompt(
            grounded_prompt_ids(tokenizer, item.knowledge, item.question),
            item.knowledge,
            str(item.line),
            item.right_answer,
        )
        for item in items
    ]
    kept = [p for p in prompts if len(p.ids) <= max_prompt_tokens]
    return kept, len(prompts) - len(kept)


class BaltoTrainer:
    """Trains a causal LM in place with BALTO or one of its baselines (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: SequenceOf[Prompt],
        labeller: Labeller,
        log_path: Path | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("no training prompts")
        torch.manual_seed(config.seed)
        self.config = config
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.labeller = labeller
        self.log_path = log_path
        self.lm = model.float().to(pick_device(config.device))
        max_model_len = max(len(p.ids) for p in self.prompts) + config.max_new_tokens
        slots = config.prompts_per_step * config.group_size
        # The rollout copy is taken before peft wraps the model's linears.
        self.rollout_policy = (
            RolloutPolicy(self.lm, num_slots=slots, max_model_len=max_model_len, native=True)
            if config.rollout_engine == "compact"
            else None
        )
        self.peft: PeftModel | None = None
        self.reference: PreTrainedModel | None = None
        if config.full:
            self.reference = copy.deepcopy(self.lm).requires_grad_(False).eval()
        elif config.init_adapter is not None:
            self.peft = PeftModel.from_pretrained(
                self.lm, str(config.init_adapter), is_trainable=True
            )
        else:
            self.peft = lora_model(self.lm, config)
        self.trainable = [p for p in self.lm.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.lr, weight_decay=config.weight_decay
        )
        self.runner = (
            self.rollout_policy.runner
            if self.rollout_policy is not None
            else ModelRunner(
                self.lm, num_slots=slots, max_model_len=max_model_len, max_candidates=1
            )
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.step_index = 0
        self.used_keys: list[str] = []
        self._rng = random.Random(config.seed)
        self._order: list[int] = []

    def next_prompts(self) -> list[Prompt]:
        """The next step's prompts: a seeded shuffle of all prompts, reshuffled each epoch."""
        chosen = []
        for _ in range(self.config.prompts_per_step):
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self._rng.shuffle(self._order)
            chosen.append(self.prompts[self._order.pop()])
        return chosen

    def _z(self, tensors: GroupTensors) -> int:
        """The group's share of the loss normaliser Z (Eq. 8)."""
        if self.config.loss_normalizer == "factual":
            return int(((tensors.labels != 0) & tensors.mask).sum())
        return int(tensors.mask.sum())

    @torch.no_grad()
    def _reference_logprobs(self, prompt: Prompt, tensors: GroupTensors) -> torch.Tensor:
        if self.reference is not None:
            return group_logprobs(self.reference, prompt.ids, tensors.response_ids, tensors.mask)
        assert self.peft is not None
        with self.peft.disable_adapter():
            return group_logprobs(self.lm, prompt.ids, tensors.response_ids, tensors.mask)

    def rollouts(self, prompts: list[Prompt]) -> tuple[list[RolloutGroup], float, float]:
        """Sample and label the step's groups; returns them and the two phases' seconds."""
        config = self.config
        start = time.perf_counter()
        self.lm.eval()
        if self.rollout_policy is not None:
            self.rollout_policy.refresh(self.lm)
        params = SamplingParams(
            max_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
        )
        seed = config.seed * 10**9 + self.step_index * len(prompts) * config.group_size
        sampled = sample_groups(
            self.runner, self.tokenizer, prompts, params, config.group_size, seed
        )
        sampled_at = time.perf_counter()
        groups = label_groups(prompts, sampled, self.tokenizer, self.labeller)
        return groups, sampled_at - start, time.perf_counter() - sampled_at

    def _old_logprobs_and_kl(
        self, prompts: list[Prompt], tensors: list[GroupTensors]
    ) -> tuple[list[torch.Tensor], float]:
        """Old-policy log-probs per group (no grad) and the per-token KL to the start policy.

        The responses were sampled from the old policy, so the k3 estimate is taken there.
        """
        old: list[torch.Tensor] = []
        kl_sum, n_tokens = 0.0, 0
        with torch.no_grad():
            for prompt, t in zip(prompts, tensors, strict=True):
                old_lp = group_logprobs(self.lm, prompt.ids, t.response_ids, t.mask)
                ref = self._reference_logprobs(prompt, t)
                kl_sum += kl_to_reference(old_lp, ref, t.mask.to(old_lp.device)) * int(t.mask.sum())
                n_tokens += int(t.mask.sum())
                old.append(old_lp)
        return old, kl_sum / n_tokens

    def _optimize(
        self,
        prompts: list[Prompt],
        tensors: list[GroupTensors],
        advantages: list[torch.Tensor],
        old: list[torch.Tensor],
    ) -> tuple[list[float], list[float], list[float]]:
        """The step's optimizer updates; returns per-update losses and gradient norms (before
        clipping) and per-group clip fractions.

        A mini-batch's loss is normalised by the mini-batch's Z (Eq. 8): each group's loss comes
        divided by the group's own Z and is weighted by ``Z_group / Z_minibatch`` before its
        backward pass. Groups whose advantages are all zero add nothing to the gradient and are
        not run.
        """
        config = self.config
        device = self.runner.device
        losses: list[float] = []
        norms: list[float] = []
        clip_fractions: list[float] = []
        mini = config.mini_batch_prompts or len(prompts)
        self.lm.train()
        for _ in range(config.epochs):
            for first in range(0, len(prompts), mini):
                batch = range(first, min(first + mini, len(prompts)))
                z_total = sum(self._z(tensors[i]) for i in batch)
                active = [i for i in batch if bool(advantages[i].ne(0).any())]
                if z_total == 0 or not active:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                loss_value = 0.0
                for i in active:
                    t = tensors[i]
                    out = clipped_surrogate_loss(
                        group_logprobs(self.lm, prompts[i].ids, t.response_ids, t.mask),
                        old[i],
                        advantages[i],
                        t.mask.to(device),
                        labels=t.labels.to(device),
                        clip_low=config.clip_low,
                        clip_high=config.clip_high,
                        normalizer=config.loss_normalizer,
                    )
                    share = out.n_tokens / z_total
                    (out.loss * share).backward()
                    loss_value += float(out.loss.detach()) * share
                    clip_fractions.append(out.clip_fraction)
                norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
                self.optimizer.step()
                losses.append(loss_value)
                norms.append(float(norm))
        self.lm.eval()
        return losses, norms, clip_fractions

    def _response_terms(
        self,
        group: RolloutGroup,
        truncated: torch.Tensor,
        n_supported: torch.Tensor,
        found_gold: torch.Tensor,
    ) -> torch.Tensor:
        """Each response's content and gold rewards less its length charge (``[G]``)."""
        config = self.config
        lengths = torch.tensor([len(r.response_ids) for r in group.responses])
        charges = length_charges(
            lengths,
            truncated,
            config.max_new_tokens,
            config.length_buffer,
            config.truncation_penalty,
        )
        rewards = content_rewards(n_supported, config.content_reward, config.content_claims)
        rewards = rewards + gold_rewards(found_gold, config.gold_reward)
        return rewards - charges

    def group_advantages(self, group: RolloutGroup, tensors: GroupTensors) -> torch.Tensor:
        """Token advantages ``[G, T]`` of one group: the scheme's (times ``token_weight``) plus
        the response terms, hallucinated tokens held at their own charge with
        ``hold_hallucinated``."""
        config, t = self.config, tensors
        advantages = config.token_weight * compute_advantages(
            config.advantage, t.labels, t.mask, t.n_supported, t.n_claims
        )
        if not (config.truncation_penalty or config.content_reward or config.gold_reward):
            return advantages
        truncated = torch.tensor([r.finish_reason == "length" for r in group.responses])
        terms = self._response_terms(group, truncated, t.n_supported, contains_gold(group))
        with_terms = add_response_terms(advantages, t.mask, terms)
        if config.hold_hallucinated:
            return hold_hallucination_penalty(with_terms, advantages, t.labels)
        return with_terms

    def step(self) -> StepLog:
        """One training step; appends its log line to ``log_path`` when one is set."""
        start = time.perf_counter()
        prompts = self.next_prompts()
        self.used_keys.extend(p.key for p in prompts)
        groups, rollout_seconds, label_seconds = self.rollouts(prompts)
        tensors = [group_tensors(g, self.pad_id) for g in groups]
        advantages = [
            self.group_advantages(g, t).to(self.runner.device)
            for g, t in zip(groups, tensors, strict=True)
        ]
        old, kl = self._old_logprobs_and_kl(prompts, tensors)
        losses, norms, clip_fractions = self._optimize(prompts, tensors, advantages, old)

        responses = [r for g in groups for r in g.responses]
        n_supported = torch.tensor([r.n_supported for r in responses])
        n_claims = torch.tensor([r.n_claims for r in responses])
        n_tokens = sum(len(r.response_ids) for r in responses)
        log = StepLog(
            step=self.step_index,
            reward=float(grpo_density_rewards(n_supported, n_claims).mean()),
            faithful=sum(r.n_supported == r.n_claims for r in responses) / len(responses),
            n_H=sum(r.n_hallucinated_tokens for r in responses),
            n_F=sum(r.n_faithful_tokens for r in responses),
            loss=sum(losses) / len(losses) if losses else 0.0,
            grad_norm=sum(norms) / len(norms) if norms else 0.0,
            kl=kl,
            clip_fraction=sum(clip_fractions) / len(clip_fractions) if clip_fractions else 0.0,
            seconds=time.perf_counter() - start,
            updates=len(norms),
            response_tokens=n_tokens / len(responses),
            truncated=sum(r.finish_reason == "length" for r in responses) / len(responses),
            gold=float(torch.cat([contains_gold(g) for g in groups]).float().mean()),
            retokenized=sum(r.retokenized for r in responses) / len(responses),
            rollout_seconds=rollout_seconds,
            label_seconds=label_seconds,
        )
        self.step_index += 1
        append_log(self.log_path, log)
        return log

    def train(self) -> list[StepLog]:
        """Run ``config.steps`` steps with a tqdm progress bar, or fewer where the step that
        passes ``config.max_seconds`` ends the run."""
        logs = []
        label = f"balto[{self.config.advantage}]"
        bar = tqdm(range(self.config.steps), desc=label, file=sys.stderr)
        start = time.perf_counter()
        for _ in bar:
            log = self.step()
            logs.append(log)
            bar.set_postfix(reward=f"{log.reward:.3f}", faithful=f"{log.faithful:.2f}")
            if self.config.max_seconds and time.perf_counter() - start >= self.config.max_seconds:
                break
        return logs

    def save(self, out_dir: Path, base_model: str) -> None:
        """Write the LoRA adapter (or the full model and tokenizer) into ``out_dir``.

        ``base_model`` (a model name or folder) is recorded as the adapter's base model.
        """
        if self.peft is not None:
            save_adapter(self.peft, out_dir, base_model)
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def run_training(config: TrainConfig, labeller: Labeller | None = None, command: str = "") -> Path:
    """Train on HaluEval dev prompts as configured; write adapter, log and summary to ``out``.

    ``command`` (the command line that started the run) is recorded in the summary.
    """
    base_name, model_path, tokenizer = resolve_base(config)
    model = load_float32(model_path)
    prompts, skipped = halueval_prompts(
        tokenizer, config.first_line, config.limit, config.max_prompt_tokens
    )
    config.out.mkdir(parents=True, exist_ok=True)
    log_path = config.out / LOG_FILE
    log_path.unlink(missing_ok=True)
    if labeller is None and config.label_workers:
        labeller = PoolLabeller(config.label_workers)
    labeller = labeller or VerifierLabeller()
    trainer = BaltoTrainer(config, model, tokenizer, prompts, labeller, log_path)
    start = time.perf_counter()
    try:
        logs = trainer.train()
    finally:
        if isinstance(labeller, PoolLabeller):
            labeller.close()
    seconds = time.perf_counter() - start
    trainer.save(config.out, base_name if config.model is None else str(model_path))
    data = {
        **halueval_lines(config.first_line, config.last_line, skipped),
        "lines_trained": sorted({int(k) for k in trainer.used_keys}),
    }
    write_summary(
        config.out / SUMMARY_FILE,
        command,
        config,
        base_name,
        data,
        steps=len(logs),
        updates=sum(log.updates for log in logs),
        seconds=round(seconds, 1),
        device=str(trainer.runner.device),
        rollout_forward=trainer.runner.backend,
        **trained_with(),
    )
    return config.out

"""Settings of a BALTO training run (`guardserve balto train` flags), validated with pydantic."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict, Field, model_validator

from finetune.config import LoraSettings, RunSettings
from groundedqa.halueval import DevLineWindow

if TYPE_CHECKING:
    from balto.loss import Normalizer


class AdvantageMethod(StrEnum):
    """Advantage schemes: BALTO, the response-level GRPO baselines, FSPO and the PA ablations."""

    BALTO = "balto"
    GRPO_B = "grpo_b"
    GRPO_D = "grpo_d"
    FSPO = "fspo"
    PA0 = "pa0"
    PA03 = "pa0.3"
    PA1 = "pa1"


_FACTUAL_METHODS = {
    AdvantageMethod.BALTO,
    AdvantageMethod.PA0,
    AdvantageMethod.PA03,
    AdvantageMethod.PA1,
}


class TrainConfig(DevLineWindow, RunSettings, LoraSettings):
    """One training run: data, rollouts, advantage scheme, optimisation and parameterisation.

    Each step samples ``group_size`` responses for each of ``prompts_per_step`` prompts, labels
    them, and makes ``epochs`` passes over them in optimizer updates of ``mini_batch_prompts``
    prompts each (gradients accumulate over the prompts of a mini-batch).
    """

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(Path("balto-run"), description="Run folder for the adapter and logs.")

    data: Literal["halueval"] = Field("halueval", description="Training prompts.")
    max_prompt_tokens: int = Field(448, ge=8, description="Longer prompts are skipped.")

    steps: int = Field(20, ge=1, description="Training steps.")
    prompts_per_step: int = Field(4, ge=1, description="Prompts sampled per step.")
    group_size: int = Field(8, ge=2, description="Responses sampled per prompt (G).")
    mini_batch_prompts: int | None = Field(
        2,
        ge=1,
        description="Prompts per optimizer update (None, in a config: all prompts of a step).",
    )
    epochs: int = Field(1, ge=1, description="Passes over each step's rollouts.")

    max_new_tokens: int = Field(48, ge=1, description="Longest sampled response in tokens.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling of rollouts.")

    advantage: AdvantageMethod = Field(
        AdvantageMethod.BALTO, description="How token advantages are computed."
    )
    truncation_penalty: float = Field(
        0.0,
        ge=0.0,
        description="Length control (0: off): a response cut at max_new_tokens is charged "
        "this on every token, against its group's mean charge.",
    )
    length_buffer: int = Field(
        0,
        ge=0,
        description="With truncation_penalty: responses longer than max_new_tokens - "
        "length_buffer tokens are charged a share of it rising linearly to all of it at the "
        "limit (DAPO's soft overlong punishment; 0: only cut responses are charged).",
    )
    content_reward: float = Field(
        0.0,
        ge=0.0,
        description="Added to every token of a response with a supported claim (in shares, "
        "with content_claims), against its group's mean (pays for answering; 0: off).",
    )
    content_claims: int = Field(
        1,
        ge=1,
        description="With content_reward: pay it in shares of 1/content_claims for each "
        "supported claim up to content_claims (1: all of it for the first).",
    )
    gold_reward: float = Field(
        0.0,
        ge=0.0,
        description="Added to every token of a response that contains its training line's "
        "gold answer, against its group's mean (pays for the answer; 0: off).",
    )
    token_weight: float = Field(
        1.0,
        gt=0.0,
        description="Scale of the token-level advantages (BALTO, PA) against the response "
        "terms (content, gold, length).",
    )
    hold_hallucinated: bool = Field(
        False,
        description="Response terms may lower a hallucinated token's advantage but never "
        "raise it: an answer's rewards do not pay for its unsupported claims (BALTO, PA).",
    )
    normalizer: Literal["auto", "factual", "tokens"] = Field(
        "auto", description="Loss normaliser Z; auto: factual tokens for BALTO/PA, else tokens."
    )
    clip_low: float = Field(0.2, ge=0.0, lt=1.0, description="Lower ratio clip (1 - low).")
    clip_high: float = Field(0.28, ge=0.0, description="Upper ratio clip (1 + high).")

    lr: float = Field(3e-4, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient-norm clip.")

    full: bool = Field(False, description="Full fine-tuning instead of LoRA.")
    init_adapter: Path | None = Field(
        None,
        description="Go on training this LoRA adapter (the logged KL stays measured against the "
        "base model); None: a fresh one.",
    )

    rollout_engine: Literal["compact", "transformers"] = Field(
        "compact",
        description="compact: sample on a frozen copy synced each step (engine.llama); "
        "transformers: on the trained model itself.",
    )
    label_workers: int = Field(
        0, ge=0, description="Processes that run the verifier labeller; 0: in this process."
    )
    max_seconds: float | None = Field(
        None,
        gt=0.0,
        description="Stop after the step that passes this many seconds, then save; None: run "
        "every step.",
    )

    seed: int = Field(0, description="Seed of sampling and initialisation.")
    device: str = Field("auto", description="auto, cpu or cuda:N; training runs in float32.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.full and self.init_adapter is not None:
            raise ValueError("init_adapter continues a LoRA adapter; it does not apply with full")
        if self.length_buffer >= self.max_new_tokens:
            raise ValueError("length_buffer must be below max_new_tokens")
        token_options = self.token_weight != 1.0 or self.hold_hallucinated
        if token_options and self.advantage not in _FACTUAL_METHODS:
            raise ValueError(
                "token_weight and hold_hallucinated apply to the token-level schemes "
                "(balto, pa0, pa0.3, pa1)"
            )
        if self.mini_batch_prompts is not None and self.prompts_per_step % self.mini_batch_prompts:
            raise ValueError("prompts_per_step must be a multiple of mini_batch_prompts")
        return self

    @property
    def loss_normalizer(self) -> Normalizer:
        """Z of Eq. 8: factual tokens for the token-level schemes, all response tokens otherwise."""
        if self.normalizer != "auto":
            return self.normalizer
        return "factual" if self.advantage in _FACTUAL_METHODS else "tokens"

    @property
    def updates_per_epoch(self) -> int:
        """Optimizer updates per pass over one step's rollouts."""
        return self.prompts_per_step // (self.mini_batch_prompts or self.prompts_per_step)

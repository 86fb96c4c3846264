"""Settings of `guardserve halt build-data` and `halt train` (their flags), with pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from finetune.config import LoraSettings, RunSettings
from groundedqa.halueval import DevLineWindow

Boundary = Literal["sentence", "clause"]  # what ends a fragment (halt.fragments)
Mode = Literal["cut", "drop"]  # how a target leaves out fragments (halt.targets)


class DataConfig(DevLineWindow, RunSettings):
    """`halt build-data`: K sampled answers per HaluEval dev question, judged by fragment."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(Path("halt-data"), description="Folder for data.jsonl and data.json.")

    max_prompt_tokens: int = Field(448, ge=8, description="Longer prompts are skipped.")

    samples: int = Field(4, ge=1, description="Answers sampled per question (K).")
    max_new_tokens: int = Field(48, ge=1, description="Longest sampled answer in tokens.")
    temperature: float = Field(0.7, gt=0.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling.")
    batch: int = Field(32, ge=1, description="Sequences decoded together.")
    boundary: Boundary = Field("clause", description="What ends a fragment: clause or sentence.")

    seed: int = Field(0, description="Seed of sampling.")
    device: str = Field("auto", description="auto, cpu or cuda:N; sampling runs in float32.")


class TrainConfig(RunSettings, LoraSettings):
    """`halt train`: LoRA SFT on the grounded prompts and their capability-aligned targets."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="The model the data were sampled from; None: base SmolLM2-135M."
    )
    data: Path = Field(Path("halt-data"), description="Folder written by `halt build-data`.")
    out: Path = Field(Path("halt-run"), description="Run folder for the adapter and logs.")

    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Keep a fragment whose position's reliability >= this."
    )
    mode: Mode = Field("cut", description="cut: end with the marker; drop: remove fragments.")
    max_prompt_tokens: int = Field(448, ge=8, description="Longer prompts are skipped.")

    epochs: int = Field(2, ge=1, description="Passes over the examples.")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer update.")
    lr: float = Field(2e-4, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient-norm clip.")

    seed: int = Field(0, description="Seed of shuffling and initialisation.")
    device: str = Field("auto", description="auto, cpu or cuda:N; training runs in float32.")

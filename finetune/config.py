"""Settings every BALTO and HALT run has (pydantic only, so the command line reads them cheaply)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RunSettings(BaseModel):
    """The model a run starts from, where it is prepared, and the torch threads it may use."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="HF folder, .gguf or model name; None: base SmolLM2-135M-Instruct."
    )
    cache_dir: str | None = Field(
        None,
        description="Where models are prepared; None: $GUARDSERVE_CACHE, else ~/.cache/guardserve.",
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; None: torch's own count."
    )


class LoraSettings(BaseModel):
    """The LoRA adapter a run trains."""

    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], description="Modules LoRA adapts."
    )

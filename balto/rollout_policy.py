"""A frozen copy of the policy that samples rollouts on the engine's compact forward.

The trained model is wrapped by peft (or trained in full) and so runs the transformers forward,
which is slow for decoding. The rollout policy is a deep copy of the base model made before
wrapping, run by a `ModelRunner` on the compact forward; before each step's rollouts `refresh`
writes the policy's current weights into it (for LoRA: base weight + the adapter's delta of each
adapted linear), so rollouts stay on-policy up to float rounding.
"""

from __future__ import annotations

import copy

import torch
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from engine.model_runner import ModelRunner

_PEFT_PREFIX = "base_model.model."


class RolloutPolicy:
    """Holds the rollout copy and its runner; `refresh` syncs it with the trained model."""

    def __init__(
        self, base: PreTrainedModel, *, num_slots: int, max_model_len: int, native: bool
    ) -> None:
        """`base` is the model before peft wraps it; it is copied, never modified."""
        self.model = copy.deepcopy(base).requires_grad_(False).eval()
        self.runner = ModelRunner(
            self.model,
            num_slots=num_slots,
            max_model_len=max_model_len,
            max_candidates=1,
            native=native,
        )

    @torch.no_grad()
    def refresh(self, policy: torch.nn.Module) -> int:
        """Copy the policy's current weights in; returns how many tensors were written.

        A peft-wrapped policy contributes its adapted linears (merged weight = base + delta);
        any other policy contributes every parameter of the same name.
        """
        written = 0
        lora_layers = [(n, m) for n, m in policy.named_modules() if isinstance(m, LoraLayer)]
        if lora_layers:
            for name, layer in lora_layers:
                target = self.model.get_submodule(name.removeprefix(_PEFT_PREFIX))
                merged = layer.get_base_layer().weight
                for adapter in layer.active_adapters:
                    merged = merged + layer.get_delta_weight(adapter)
                target.weight.copy_(merged)
                written += 1
        else:
            own = dict(self.model.named_parameters())
            for name, parameter in policy.named_parameters():
                if name in own:
                    own[name].copy_(parameter)
                    written += 1
        if self.runner.native is not None:
            self.runner.native.repack()
        return written

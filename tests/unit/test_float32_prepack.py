"""Prepacked float32 projections: transformers parity, weight writes, the probe's layer states."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedModel

from benchmarks.prompts import PROMPTS as CHAT_PROMPTS
from engine.llama import can_prepack
from engine.model_runner import ModelRunner
from engine.model_store import DEFAULT_MODEL, resolve_model
from guard.probe import PROBE_FILE, PROBES_DIR, HallucinationProbe
from tests.unit.conftest import build_tiny_llama
from tests.unit.test_model_runner import PROMPTS, full_forward, tiny_variant

pytestmark = pytest.mark.skipif(
    not can_prepack(torch.zeros(1)), reason="float32 prepacking needs oneDNN on x86-64"
)


def reference_states(
    model: PreTrainedModel, ids: list[int], layer: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transformers forward's last-position logits, penultimate and `layer` states."""
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    hidden = out.hidden_states
    return out.logits[0, -1].float(), hidden[-2][0, -1].float(), hidden[layer][0, -1].float()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("every_row", [False, True], ids=["as-loaded", "onednn-every-row"])
def test_prepacked_float32_forward_matches_transformers_and_follows_weight_writes(
    kind: str, every_row: bool
) -> None:
    """Prefill (12 rows), a tree step (3 rows) and the head on 1-2 rows; `every_row` also sends
    the few-row products to oneDNN, which an Intel CPU otherwise leaves to MKL."""
    model = build_tiny_llama(seed=3) if kind == "llama" else tiny_variant("qwen2")
    model.requires_grad_(False)
    runner = ModelRunner(model, num_slots=2, max_model_len=64, max_candidates=2, native=True)
    projections = runner.native.projections()
    assert all(p.packed is not None for p in projections)
    if every_row:
        for projection in projections:
            projection.plain_below = 0
    prompts, candidates = [PROMPTS[0], PROMPTS[2]], [[11, 12], [13]]

    def run() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        for slot in (0, 1):
            runner.truncate(slot, 0)
        prefill = runner.extend([0, 1], prompts)
        step = runner.tree_step([0, 1], candidates)
        pairs = [(b, i) for b, row in enumerate(candidates) for i in range(len(row))]
        logits = [runner.logits(step.final[b, i]) for b, i in pairs]
        logits.append(runner.logits(step.final[:, 0]))
        return prefill.logits, logits, [step.hidden[b, i] for b, i in pairs]

    def expected() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        prefill = torch.stack([full_forward(model, p)[0] for p in prompts])
        rows = [
            full_forward(model, [*p, t])
            for p, row in zip(prompts, candidates, strict=True)
            for t in row
        ]
        logits = [r[0] for r in rows] + [torch.stack([rows[0][0], rows[2][0]])]
        return prefill, logits, [r[1] for r in rows]

    def assert_matches(got: object, want: object) -> None:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    assert_matches(run(), expected())
    # A weight written in place (as the BALTO rollout copy is) reaches the packed copy on repack.
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(-1)
    stale = run()
    assert not torch.allclose(stale[0], expected()[0], atol=1e-3)
    runner.native.repack()
    assert_matches(run(), expected())


def chat_prompts(model_dir: str) -> list[list[int]]:
    """The serving benchmark's prompts under the model's chat template."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
        for prompt in CHAT_PROMPTS
    ]


def test_default_model_probe_layer_states_unchanged_by_prepacking() -> None:
    """The committed probe reads the default model's layer-20 states: prepacked float32 (as
    loaded) and plain MKL products both match the transformers forward's hidden states there,
    and the probe's risk moves by far less than any calibrated threshold could notice."""
    probe = HallucinationProbe.load(PROBES_DIR / DEFAULT_MODEL / PROBE_FILE)
    model_dir = resolve_model(None)
    runner = ModelRunner.load(
        model_dir,
        num_slots=4,
        max_model_len=128,
        max_candidates=4,
        device="cpu",
        dtype="float32",
        probe_layer=probe.layer,
    )
    assert runner.backend == "compact"
    assert all(p.packed is not None for p in runner.native.projections())
    prompts = chat_prompts(str(model_dir))
    candidates = [[28, 314, 1069, 504], [2], [17, 30], [504, 11, 7]]
    slots = list(range(len(prompts)))
    references = [
        [reference_states(runner.model, [*p, t], probe.layer) for t in row]
        for p, row in zip(prompts, candidates, strict=True)
    ]

    def probe_states() -> list[torch.Tensor]:
        for slot in slots:
            runner.truncate(slot, 0)
        runner.extend(slots, prompts)
        step = runner.tree_step(slots, candidates)
        assert step.probe is not None
        for b, row_references in enumerate(references):
            for i, (logits, penultimate, layer_state) in enumerate(row_references):
                torch.testing.assert_close(step.probe[b, i], layer_state, atol=1e-3, rtol=1e-4)
                torch.testing.assert_close(step.hidden[b, i], penultimate, atol=1e-3, rtol=1e-4)
                torch.testing.assert_close(
                    runner.logits(step.final[b, i]), logits, atol=1e-3, rtol=1e-4
                )
        return [step.probe[b, : len(row)] for b, row in enumerate(candidates)]

    prepacked = probe_states()
    runner.native.set_prepacked(False)
    plain = probe_states()
    for new, old in zip(prepacked, plain, strict=True):
        torch.testing.assert_close(new, old, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(probe.risk(new), probe.risk(old), atol=1e-5, rtol=0)

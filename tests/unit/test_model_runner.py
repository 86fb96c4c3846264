"""The runner's batched slot decoding and tree step agree with plain full forwards."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from engine.model_runner import ModelRunner
from engine.model_store import resolve_model
from tests.unit.conftest import build_tiny_llama


def full_forward(model: LlamaForCausalLM, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position logits and penultimate-layer state of a plain uncached forward."""
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0, -1].float(), out.hidden_states[-2][0, -1].float()


def greedy_reference(model: LlamaForCausalLM, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by full forwards, one sequence at a time."""
    ids = list(prompt)
    for _ in range(steps):
        logits, _ = full_forward(model, ids)
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


@pytest.fixture(params=[True, False], ids=["compact", "transformers"])
def native(request: pytest.FixtureRequest) -> bool:
    """Every runner test runs on the compact forward and on the transformers one."""
    return request.param


def make_runner(
    model: LlamaForCausalLM, native: bool, slots: int = 4, candidates: int = 4
) -> ModelRunner:
    return ModelRunner(
        model, num_slots=slots, max_model_len=64, max_candidates=candidates, native=native
    )


PROMPTS = [[5, 17, 33, 2, 9], [40, 41], [7, 7, 7, 8, 60, 61, 62], [90]]


def test_batched_slot_decoding_equals_single_sequence_greedy(
    tiny_llama: LlamaForCausalLM, native: bool
) -> None:
    runner = make_runner(tiny_llama, native)
    slots = [2, 0, 3, 1]
    out = runner.extend(slots, PROMPTS)
    generated: list[list[int]] = [[] for _ in PROMPTS]
    next_tokens = [int(row.argmax()) for row in out.logits]
    for _ in range(8):
        for row, token in enumerate(next_tokens):
            generated[row].append(token)
        step = runner.tree_step(slots, [[t] for t in next_tokens])
        runner.commit(slots, [0] * len(slots))
        next_tokens = [int(runner.logits(step.final[row, 0]).argmax()) for row in range(len(slots))]
    for prompt, tokens in zip(PROMPTS, generated, strict=True):
        assert tokens == greedy_reference(tiny_llama, prompt, 8)


def test_padding_of_a_long_slot_stays_inside_the_position_table(
    tiny_llama: LlamaForCausalLM, native: bool
) -> None:
    """A slot near max_model_len prefilled beside a longer chunk: its padding has no position."""
    runner = ModelRunner(tiny_llama, num_slots=2, max_model_len=10, max_candidates=1, native=native)
    runner.extend([1], [[5, 17, 33, 2, 9, 40, 41, 42]])
    out = runner.extend([0, 1], [[7, 8, 60, 61, 62, 63], [90]])
    expected, _ = full_forward(tiny_llama, [5, 17, 33, 2, 9, 40, 41, 42, 90])
    torch.testing.assert_close(out.logits[1], expected, atol=1e-4, rtol=0)


def test_requests_join_and_leave_between_steps(tiny_llama: LlamaForCausalLM, native: bool) -> None:
    runner = make_runner(tiny_llama, native)
    first = runner.extend([0], [PROMPTS[0]])
    token_a = int(first.logits[0].argmax())
    runner.tree_step([0], [[token_a]])
    runner.commit([0], [0])
    second = runner.extend([1], [PROMPTS[1]])
    token_b = int(second.logits[0].argmax())
    step = runner.tree_step([0, 1], [[9], [token_b]])
    runner.commit([0, 1], [0, 0])
    expected, _ = full_forward(tiny_llama, [*PROMPTS[1], token_b])
    torch.testing.assert_close(runner.logits(step.final[1, 0]), expected, atol=1e-4, rtol=1e-4)
    expected_a, _ = full_forward(tiny_llama, [*PROMPTS[0], token_a, 9])
    torch.testing.assert_close(runner.logits(step.final[0, 0]), expected_a, atol=1e-4, rtol=1e-4)


def test_tree_step_candidates_match_separate_full_forwards(
    tiny_llama: LlamaForCausalLM, native: bool
) -> None:
    runner = make_runner(tiny_llama, native)
    slots = [1, 3]
    runner.extend(slots, [PROMPTS[0], PROMPTS[2]])
    candidates = [[11, 12, 13, 14], [50, 51]]
    step = runner.tree_step(slots, candidates)
    for row, (prompt, cands) in enumerate(zip([PROMPTS[0], PROMPTS[2]], candidates, strict=True)):
        for i, token in enumerate(cands):
            logits, hidden = full_forward(tiny_llama, [*prompt, token])
            torch.testing.assert_close(
                runner.logits(step.final[row, i]), logits, atol=1e-4, rtol=1e-4
            )
            torch.testing.assert_close(step.hidden[row, i], hidden, atol=1e-4, rtol=1e-4)


def test_commit_keeps_the_chosen_candidate(tiny_llama: LlamaForCausalLM, native: bool) -> None:
    runner = make_runner(tiny_llama, native)
    runner.extend([0], [PROMPTS[0]])
    runner.tree_step([0], [[11, 12, 13]])
    runner.commit([0], [2])
    step = runner.tree_step([0], [[20]])
    expected, _ = full_forward(tiny_llama, [*PROMPTS[0], 13, 20])
    torch.testing.assert_close(runner.logits(step.final[0, 0]), expected, atol=1e-4, rtol=1e-4)


def test_rollback_and_slot_reuse(tiny_llama: LlamaForCausalLM, native: bool) -> None:
    runner = make_runner(tiny_llama, native)
    runner.extend([0], [PROMPTS[0]])
    for token in (30, 31, 32):
        runner.tree_step([0], [[token]])
        runner.commit([0], [0])
    runner.truncate(0, len(PROMPTS[0]) + 1)
    step = runner.tree_step([0], [[44]])
    expected, _ = full_forward(tiny_llama, [*PROMPTS[0], 30, 44])
    torch.testing.assert_close(runner.logits(step.final[0, 0]), expected, atol=1e-4, rtol=1e-4)
    runner.truncate(0, 0)
    reused = runner.extend([0], [PROMPTS[3]])
    expected, _ = full_forward(tiny_llama, PROMPTS[3])
    torch.testing.assert_close(reused.logits[0], expected, atol=1e-4, rtol=1e-4)


def test_short_row_near_the_length_cap_beside_a_wide_one(
    tiny_llama: LlamaForCausalLM, native: bool
) -> None:
    # Slot 0 ends at the cap; its padding beside slot 1's six tokens would run past it.
    runner = ModelRunner(tiny_llama, num_slots=2, max_model_len=10, max_candidates=1, native=native)
    runner.extend([0], [[1, 2, 3, 4, 5, 6, 7, 8]])
    out = runner.extend([0, 1], [[9, 10], [11, 12, 13, 14, 15, 16]])
    for row, ids in enumerate(([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16])):
        expected, _ = full_forward(tiny_llama, ids)
        torch.testing.assert_close(out.logits[row], expected, atol=1e-4, rtol=1e-4)


def test_prefill_returns_each_prompt_tokens_penultimate_state(
    tiny_llama: LlamaForCausalLM, native: bool
) -> None:
    runner = make_runner(tiny_llama, native)
    out = runner.extend([0, 1], [PROMPTS[0], PROMPTS[1]])
    with torch.inference_mode():
        states = tiny_llama(torch.tensor([PROMPTS[1]]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(out.states[1], states[-2][0], atol=1e-4, rtol=1e-4)


def test_tree_step_probe_layer_states_equal_full_forward(
    tiny_llama: LlamaForCausalLM, native: bool
) -> None:
    layer = 1
    runner = ModelRunner(
        tiny_llama,
        num_slots=2,
        max_model_len=64,
        max_candidates=4,
        probe_layer=layer,
        native=native,
    )
    prompt = PROMPTS[0]
    runner.extend([1], [prompt])
    candidates = [11, 12, 13]
    step = runner.tree_step([1], [candidates])
    assert step.probe is not None
    for index, token in enumerate(candidates):
        with torch.inference_mode():
            out = tiny_llama(torch.tensor([[*prompt, token]]), output_hidden_states=True)
        expected = out.hidden_states[layer][0, -1].float()
        torch.testing.assert_close(step.probe[0, index], expected, atol=1e-4, rtol=1e-4)


def test_cache_grows_with_the_longest_sequence_and_decodes_the_same(
    tiny_llama: LlamaForCausalLM,
) -> None:
    def decode(runner: ModelRunner, steps: int) -> tuple[list[list[int]], list[torch.Tensor]]:
        slots = [0, 1]
        prompts = [PROMPTS[2], PROMPTS[1]]
        out = runner.extend(slots, prompts)
        tokens = [[int(row.argmax())] for row in out.logits]
        logits = [out.logits]
        for _ in range(steps):
            # Two candidates per row, the second chosen, so commits move K/V across growths.
            step = runner.tree_step(slots, [[t[-1], (t[-1] + 1) % 96] for t in tokens])
            runner.commit(slots, [1, 1])
            rows = torch.stack([runner.logits(step.final[row, 1]) for row in range(2)])
            logits.append(rows)
            for row, token in enumerate(rows.argmax(-1).tolist()):
                tokens[row].append(int(token))
        return tokens, logits

    growing = ModelRunner(
        tiny_llama, num_slots=2, max_model_len=100, max_candidates=2, initial_cache_len=4
    )
    assert growing.cache.capacity == 4
    small_bytes = growing.cache.nbytes
    fixed = ModelRunner(
        tiny_llama, num_slots=2, max_model_len=100, max_candidates=2, initial_cache_len=102
    )
    grown_tokens, grown_logits = decode(growing, 40)
    fixed_tokens, fixed_logits = decode(fixed, 40)
    assert grown_tokens == fixed_tokens
    for a, b in zip(grown_logits, fixed_logits, strict=True):
        torch.testing.assert_close(a, b)
    # 7 prompt tokens + 40 steps + 2 candidates: doubled from 4 to 64, short of the 102 cap.
    assert growing.cache.capacity == 64
    assert growing.cache.nbytes == small_bytes * 65 // 5
    assert fixed.cache.capacity == 102


def test_cache_refuses_to_grow_past_its_cap(tiny_llama: LlamaForCausalLM) -> None:
    runner = ModelRunner(
        tiny_llama, num_slots=1, max_model_len=16, max_candidates=1, initial_cache_len=4
    )
    runner.extend([0], [list(range(3, 19))])
    assert runner.cache.capacity == 16
    with pytest.raises(ValueError, match="max_model_len"):
        runner.extend([0], [[5]])


def test_every_probe_layer_matches_transformers_hidden_states(tiny_llama: LlamaForCausalLM) -> None:
    prompt = PROMPTS[2]
    with torch.inference_mode():
        out = tiny_llama(torch.tensor([[*prompt, 11]]), output_hidden_states=True)
    for layer in range(len(out.hidden_states)):
        runner = ModelRunner(
            tiny_llama,
            num_slots=1,
            max_model_len=64,
            max_candidates=2,
            probe_layer=layer,
            native=True,
        )
        runner.extend([0], [prompt])
        step = runner.tree_step([0], [[11, 12]])
        assert step.probe is not None
        expected = out.hidden_states[layer][0, -1].float()
        torch.testing.assert_close(step.probe[0, 0], expected, atol=1e-4, rtol=1e-4)


def tiny_variant(kind: str) -> PreTrainedModel:
    """Tiny random models the compact forward must also match: Qwen2 (QKV bias), scaled rope."""
    torch.manual_seed(1)
    shape = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape, rope_theta=1e6)).eval()
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e4}
    return LlamaForCausalLM(LlamaConfig(**shape, rope_parameters=rope)).eval()


@pytest.mark.parametrize("kind", ["qwen2", "llama-linear-rope"])
def test_compact_forward_matches_other_llama_family_configs(kind: str) -> None:
    model = tiny_variant(kind)
    runner = ModelRunner(model, num_slots=2, max_model_len=64, max_candidates=4, native=True)
    assert runner.backend == "compact"
    runner.extend([1], [PROMPTS[2]])
    step = runner.tree_step([1], [[11, 12]])
    for index, token in enumerate([11, 12]):
        logits, hidden = full_forward(model, [*PROMPTS[2], token])
        torch.testing.assert_close(
            runner.logits(step.final[0, index]), logits, atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(step.hidden[0, index], hidden, atol=1e-4, rtol=1e-4)


def test_unsupported_configs_fall_back_to_transformers() -> None:
    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
    )
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    runner = ModelRunner(model, num_slots=1, max_model_len=16, max_candidates=1)
    assert runner.backend == "transformers"
    runner.extend([0], [PROMPTS[0]])
    step = runner.tree_step([0], [[11]])
    logits, _ = full_forward(model, [*PROMPTS[0], 11])
    torch.testing.assert_close(runner.logits(step.final[0, 0]), logits, atol=1e-4, rtol=1e-4)


def test_trainable_models_keep_the_transformers_forward(tiny_llama: LlamaForCausalLM) -> None:
    runner = ModelRunner(tiny_llama, num_slots=1, max_model_len=16, max_candidates=1)
    assert runner.backend == "transformers"
    frozen = build_tiny_llama().requires_grad_(False)
    runner = ModelRunner(frozen, num_slots=1, max_model_len=16, max_candidates=1)
    assert runner.backend == "compact"


def test_embedded_model_compact_forward_matches_transformers() -> None:
    runner = ModelRunner.load(
        resolve_model(None), num_slots=2, max_model_len=64, max_candidates=2, device="cpu"
    )
    assert runner.backend == "compact"
    prompt = [1, 504, 3458, 314, 4582, 28, 1069, 30]
    expected = greedy_reference(runner.model, prompt, 4)
    out = runner.extend([0], [prompt])
    tokens = [int(out.logits[0].argmax())]
    for _ in range(3):
        step = runner.tree_step([0], [[tokens[-1]]])
        runner.commit([0], [0])
        tokens.append(int(runner.logits(step.final[0, 0]).argmax()))
    assert tokens == expected
    reference, _ = full_forward(runner.model, [*prompt, *tokens[:-1]])
    torch.testing.assert_close(runner.logits(step.final[0, 0]), reference, atol=2e-3, rtol=2e-3)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
def test_prepacked_bfloat16_projections_give_the_same_states_and_follow_weight_writes() -> None:
    models = [build_tiny_llama(seed=3).to(torch.bfloat16).requires_grad_(False) for _ in "ab"]
    plain, packed = (
        ModelRunner(model, num_slots=2, max_model_len=64, max_candidates=2, native=True)
        for model in models
    )
    plain.native.set_prepacked(False)
    assert all(p.packed is not None for p in packed.native.projections())

    def step(runner: ModelRunner) -> tuple[torch.Tensor, torch.Tensor]:
        for slot in (0, 1):
            runner.truncate(slot, 0)
        runner.extend([0, 1], [PROMPTS[0], PROMPTS[2]])
        out = runner.tree_step([0, 1], [[11, 12], [13, 14]])
        return runner.logits(out.final), out.hidden

    for a, b in zip(step(plain), step(packed), strict=True):
        assert torch.equal(a, b)
    # A weight written in place (as the BALTO rollout copy is) reaches the packed copy on repack.
    with torch.no_grad():
        for model in models:
            model.model.layers[1].mlp.down_proj.weight.mul_(-1)
    stale = step(packed)
    packed.native.repack()
    for a, b in zip(step(plain), step(packed), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(stale[0], step(packed)[0])


def test_padded_prefill_packs_real_tokens_and_matches_rows_run_alone(
    tiny_llama: LlamaForCausalLM,
) -> None:
    runner = ModelRunner(tiny_llama, num_slots=4, max_model_len=64, max_candidates=2, native=True)
    together = runner.extend([0, 1, 2, 3], PROMPTS)  # widths 5, 2, 7, 1: padded to 7
    for slot, prompt in enumerate(PROMPTS):
        runner.truncate(slot, 0)
        alone = runner.extend([slot], [prompt])
        torch.testing.assert_close(together.logits[slot], alone.logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together.states[slot], alone.states[0], atol=1e-5, rtol=1e-5)

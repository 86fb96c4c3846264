"""BALTO trainer on a tiny random Llama: rollouts, shared-prompt log-probs, a step, export, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from balto.config import TrainConfig
from balto.export import export_adapter
from balto.rollout import (
    PoolLabeller,
    Prompt,
    ResponseLabels,
    Rollout,
    RolloutGroup,
    VerifierLabeller,
    collect_rollouts,
    group_tensors,
)
from balto.rollout_policy import RolloutPolicy
from balto.trainer import BaltoTrainer, StepLog, contains_gold, group_logprobs
from engine.model_runner import ModelRunner
from engine.model_store import MARKER_FILE, adapter_digest, prepare_balto
from engine.sampling import SamplingParams
from guardserve.cli import build_parser
from guardserve.commands.balto import train_config
from tests.unit.conftest import build_tiny_llama, build_tiny_tokenizer

PROMPTS = [
    Prompt(ids=[5, 17, 33, 9], context="w5 w17", key="1"),
    Prompt(ids=[40, 41, 42], context="w40", key="2"),
]


class WordLabeller:
    """Stub labeller: words w3-w47 are faithful claims, w48-w95 hallucinated, the rest neutral.

    Each labelled token counts as one claim. Every call is recorded for hand recomputation.
    """

    def __init__(self) -> None:
        self.calls: list[ResponseLabels] = []

    def __call__(
        self, response: str, context: str, offsets: list[tuple[int, int]]
    ) -> ResponseLabels:
        labels = []
        for start, end in offsets:
            word = response[start:end]
            found = re.match(r"w(\d+)", word)  # a sampled word can carry punctuation: "w77.."
            number = int(found.group(1)) if found else -1
            labels.append(1 if 3 <= number <= 47 else -1 if number >= 48 else 0)
        result = ResponseLabels(labels, sum(x > 0 for x in labels), sum(x != 0 for x in labels))
        self.calls.append(result)
        return result


def tiny_config(tmp_path: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "steps": 2,
        "prompts_per_step": 2,
        "group_size": 4,
        "mini_batch_prompts": 1,
        "max_new_tokens": 6,
        "lr": 0.05,
        "lora_r": 4,
        "out": tmp_path,
        "seed": 3,
    }
    values.update(overrides)
    return TrainConfig(**values)


def test_rollouts_have_group_shapes_masks_and_retokenized_labels() -> None:
    tokenizer = build_tiny_tokenizer()
    runner = ModelRunner(build_tiny_llama(), num_slots=8, max_model_len=32, max_candidates=1)
    labeller = WordLabeller()
    params = SamplingParams(max_tokens=6, temperature=1.0)
    groups = collect_rollouts(runner, tokenizer, PROMPTS, labeller, params, 4, seed=11)

    assert [g.prompt for g in groups] == PROMPTS
    assert [len(g.responses) for g in groups] == [4, 4]
    texts = [r.text for g in groups for r in g.responses]
    assert len(set(texts)) > 1  # different seeds, different samples
    for group in groups:
        tensors = group_tensors(group, pad_id=0)
        lengths = [len(r.response_ids) for r in group.responses]
        assert tensors.response_ids.shape == (4, max(lengths))
        assert tensors.mask.sum(dim=1).tolist() == lengths
        assert not tensors.labels[~tensors.mask].any()
        assert not tensors.response_ids[~tensors.mask].any()
        assert tensors.n_claims.tolist() == [sum(x != 0 for x in r.labels) for r in group.responses]
        for row, rollout in enumerate(group.responses):
            expected = tokenizer(rollout.text, add_special_tokens=False)["input_ids"]
            if rollout.finish_reason == "stop":
                expected = [*expected, tokenizer.eos_token_id]
            assert rollout.response_ids == expected
            assert 1 <= len(rollout.response_ids) <= 7  # 6 sampled tokens, plus an end token
            assert tensors.labels[row, : lengths[row]].tolist() == rollout.labels
            assert rollout.n_supported == sum(x > 0 for x in rollout.labels)


def test_shared_prompt_logprobs_equal_full_forwards() -> None:
    model = build_tiny_llama()
    prompt = [5, 17, 33, 9]
    responses = [[40, 41, 42, 43], [7, 8], [60]]
    ids = torch.zeros(3, 4, dtype=torch.long)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for row, response in enumerate(responses):
        ids[row, : len(response)] = torch.tensor(response)
        mask[row, : len(response)] = True
    with torch.no_grad():
        shared = group_logprobs(model, prompt, ids, mask)
        for row, response in enumerate(responses):
            full = model(torch.tensor([prompt + response])).logits[0].log_softmax(-1)
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
            expected = full[positions, torch.tensor(response)]
            torch.testing.assert_close(shared[row, : len(response)], expected, atol=1e-5, rtol=0)


def test_lora_steps_log_every_field_and_change_only_adapter_weights(tmp_path: Path) -> None:
    model = build_tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    labeller = WordLabeller()
    log_path = tmp_path / "log.jsonl"
    trainer = BaltoTrainer(
        tiny_config(tmp_path), model, build_tiny_tokenizer(), PROMPTS, labeller, log_path
    )
    first = trainer.step()

    lines = log_path.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == set(StepLog.model_fields)
    for field in ("step", "reward", "faithful", "n_H", "n_F", "loss", "grad_norm", "kl"):
        assert field in record
    assert {"clip_fraction", "seconds"} <= set(record)
    # Recompute the rollout statistics by hand from what the labeller returned.
    calls = labeller.calls
    assert len(calls) == 8
    assert record["n_H"] == sum(x < 0 for c in calls for x in c.token_labels)
    assert record["n_F"] == sum(x > 0 for c in calls for x in c.token_labels)
    rewards = [c.n_supported / c.n_claims if c.n_claims else 1.0 for c in calls]
    assert record["reward"] == pytest.approx(sum(rewards) / 8)
    assert record["faithful"] == pytest.approx(sum(c.n_supported == c.n_claims for c in calls) / 8)
    # Two mini-batches of one prompt each: two updates; the first pass starts at the start policy.
    assert first.updates == 2
    assert first.grad_norm > 0
    assert first.kl == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= first.clip_fraction <= 1.0

    after = model.state_dict()
    lora_keys = [k for k in after if "lora_" in k]
    assert lora_keys
    assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora_keys)
    for key, value in before.items():
        base_key = key.replace(".weight", ".base_layer.weight")
        current = after[base_key] if base_key in after else after[key]
        assert torch.equal(current, value), key

    second = trainer.step()
    assert second.step == 1
    assert second.kl > 0  # sampled from the updated policy, which left the start policy
    assert len(log_path.read_text().splitlines()) == 2


def test_init_adapter_goes_on_from_the_saved_adapter(tmp_path: Path) -> None:
    first = BaltoTrainer(
        tiny_config(tmp_path), build_tiny_llama(), build_tiny_tokenizer(), PROMPTS, WordLabeller()
    )
    first.step()
    first.save(tmp_path / "adapter", "tiny")
    saved = {k: v.clone() for k, v in first.lm.state_dict().items() if "lora_" in k}
    config = tiny_config(
        tmp_path,
        init_adapter=tmp_path / "adapter",
        truncation_penalty=0.5,
        length_buffer=2,
        content_reward=0.5,
    )
    second = BaltoTrainer(
        config, build_tiny_llama(), build_tiny_tokenizer(), PROMPTS, WordLabeller()
    )
    loaded = {k: v for k, v in second.lm.state_dict().items() if "lora_" in k}
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    log = second.step()
    assert log.truncated > 0  # the tiny model rarely ends within 6 tokens: the penalty applies
    assert log.updates > 0
    with pytest.raises(ValidationError):
        TrainConfig(full=True, init_adapter=tmp_path / "adapter")
    with pytest.raises(ValidationError):
        TrainConfig(truncation_penalty=0.5, length_buffer=48, max_new_tokens=48)


def test_gold_reward_pays_the_responses_that_contain_the_training_answer(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, gold_reward=1.0, truncation_penalty=0.5, length_buffer=2)
    trainer = BaltoTrainer(
        config, build_tiny_llama(), build_tiny_tokenizer(), PROMPTS, WordLabeller()
    )

    def rollout(text: str, length: int) -> Rollout:
        return Rollout(text, [5] * length, [0] * length, 0, 0, "stop", False)

    prompt = Prompt(ids=[5, 17], context="w5 w17", key="9", answer="W17")
    group = RolloutGroup(prompt, [rollout("It is w17.", 5), rollout("w5", 6), rollout("w170", 2)])
    assert contains_gold(group).tolist() == [True, False, False]
    cut = torch.tensor([False, True, False])
    terms = trainer._response_terms(group, cut, torch.zeros(3), contains_gold(group))
    assert torch.allclose(terms, torch.tensor([1.0 - 0.25, -0.5, 0.0]))
    no_answer = RolloutGroup(PROMPTS[0], [rollout("w5", 2), rollout("", 1)])
    assert not contains_gold(no_answer).any()
    log = trainer.step()
    assert 0.0 <= log.gold <= 1.0


def test_token_weight_and_held_hallucinations_shape_group_advantages(tmp_path: Path) -> None:
    prompt = Prompt(ids=[5, 17], context="w5 w17", key="9", answer="W17")
    answers = Rollout("w17 w60", [5, 6], [1, -1], 1, 2, "stop", False)  # gold + 1 unsupported
    misses = Rollout("w5 w60", [7, 8], [1, -1], 1, 2, "stop", False)
    group = RolloutGroup(prompt, [answers, misses])
    tensors = group_tensors(group)

    def advantages(**overrides: object) -> list[list[float]]:
        config = tiny_config(tmp_path, gold_reward=1.0, **overrides)
        trainer = BaltoTrainer(
            config, build_tiny_llama(), build_tiny_tokenizer(), PROMPTS, WordLabeller()
        )
        return trainer.group_advantages(group, tensors).tolist()

    # BALTO: -1 / +1 on each response, gold reward +-0.5 against the group's mean
    assert advantages() == [[1.5, -0.5], [0.5, -1.5]]
    assert advantages(token_weight=2.0) == [[2.5, -1.5], [1.5, -2.5]]
    # held: the answer's reward no longer pays for its unsupported claim
    assert advantages(hold_hallucinated=True) == [[1.5, -1.0], [0.5, -1.5]]
    with pytest.raises(ValidationError):
        TrainConfig(advantage="grpo_d", hold_hallucinated=True)
    with pytest.raises(ValidationError):
        TrainConfig(advantage="grpo_d", token_weight=2.0)
    args = build_parser().parse_args(
        ["balto", "train", "--hold-hallucinated", "--token-weight", "2"]
    )
    assert (train_config(args).hold_hallucinated, train_config(args).token_weight) == (True, 2.0)


def test_full_fine_tuning_step_updates_base_weights(tmp_path: Path) -> None:
    model = build_tiny_llama()
    before = model.model.layers[0].self_attn.q_proj.weight.clone()
    trainer = BaltoTrainer(
        tiny_config(tmp_path, full=True, lr=1e-3),
        model,
        build_tiny_tokenizer(),
        PROMPTS,
        WordLabeller(),
    )
    log = trainer.step()
    assert log.updates == 2
    assert log.kl == pytest.approx(0.0, abs=1e-6)
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)
    assert not any("lora_" in k for k in model.state_dict())


def test_export_merges_the_adapter_into_a_loadable_folder(tmp_path: Path) -> None:
    base_dir, adapter_dir, out_dir = tmp_path / "base", tmp_path / "adapter", tmp_path / "out"
    build_tiny_llama().save_pretrained(base_dir)
    tokenizer: PreTrainedTokenizerFast = build_tiny_tokenizer()
    tokenizer.save_pretrained(base_dir)
    lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora_config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(adapter_dir)
    prompt = [5, 17, 33, 9, 2]
    with torch.no_grad():
        expected = peft_model(torch.tensor([prompt])).logits[0, -1]
        base_logits = AutoModelForCausalLM.from_pretrained(base_dir)(torch.tensor([prompt]))
    assert not torch.allclose(base_logits.logits[0, -1], expected, atol=1e-3)

    (adapter_dir / "training.json").write_text('{"data": {"lines": [1, 40]}}')
    export_adapter(adapter_dir, out_dir, base=str(base_dir))

    assert (out_dir / "training.json").read_text() == '{"data": {"lines": [1, 40]}}'
    merged = AutoModelForCausalLM.from_pretrained(out_dir)
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        got = merged(torch.tensor([prompt])).logits[0, -1]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    runner = ModelRunner.load(out_dir, num_slots=1, max_model_len=16, max_candidates=1)
    torch.testing.assert_close(runner.extend([0], [prompt]).logits[0], expected, atol=1e-4, rtol=0)
    marker = json.loads((out_dir / MARKER_FILE).read_text())
    assert marker["adapter_sha256"] == adapter_digest(adapter_dir)
    assert (out_dir / "tokenizer.json").exists()


def test_default_model_is_merged_once_and_again_when_the_adapter_changes(tmp_path: Path) -> None:
    base_dir, adapter_dir, target = tmp_path / "base", tmp_path / "adapter", tmp_path / "merged"
    build_tiny_llama().save_pretrained(base_dir)
    build_tiny_tokenizer().save_pretrained(base_dir)
    lora_config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora_config)
    peft_model.save_pretrained(adapter_dir)

    prepare_balto(base_dir, target, adapter_dir)
    first = (target / MARKER_FILE).stat().st_mtime_ns
    prepare_balto(base_dir, target, adapter_dir)
    assert (target / MARKER_FILE).stat().st_mtime_ns == first  # same adapter: not merged again

    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
    peft_model.save_pretrained(adapter_dir)
    prepare_balto(base_dir, target, adapter_dir)
    marker = json.loads((target / MARKER_FILE).read_text())
    assert marker["adapter_sha256"] == adapter_digest(adapter_dir)
    assert not list(tmp_path.glob("merged.partial-*"))


def test_cli_flags_map_onto_the_config(tmp_path: Path) -> None:
    flags = ["--lora-target-modules", "q_proj", "k_proj", "--out", str(tmp_path), "--full"]
    args = build_parser().parse_args(
        ["balto", "train", "--model", "default", "--steps", "3", "--advantage", "grpo_d", *flags]
    )
    config = train_config(args)
    assert config.model is None
    assert (config.steps, config.advantage, config.full) == (3, "grpo_d", True)
    assert config.lora_target_modules == ["q_proj", "k_proj"]
    assert config.out == tmp_path
    assert config.group_size == TrainConfig().group_size  # untouched flags keep the defaults
    assert config.loss_normalizer == "tokens"
    assert TrainConfig(advantage="balto").loss_normalizer == "factual"
    export = build_parser().parse_args(["balto", "export", "--adapter", "a", "--out", "b"])
    assert (export.adapter, export.out, export.base) == (Path("a"), Path("b"), None)


def test_config_refuses_release_lines() -> None:
    with pytest.raises(ValidationError):
        TrainConfig(first_line=7990, limit=20)
    with pytest.raises(ValidationError):
        TrainConfig(prompts_per_step=4, mini_batch_prompts=3)


def test_rollout_copy_follows_the_lora_policy_and_the_full_policy() -> None:
    model = build_tiny_llama()
    policy = RolloutPolicy(model, num_slots=1, max_model_len=16, native=True)
    assert policy.runner.backend == "compact"
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    prompt = [5, 17, 33, 9]
    with torch.no_grad():
        expected = peft_model(torch.tensor([prompt])).logits[0, -1]
    assert policy.refresh(peft_model) == model.config.num_hidden_layers  # one q_proj each
    got = policy.runner.extend([0], [prompt]).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    full = build_tiny_llama()
    with torch.no_grad():
        full.model.layers[1].mlp.up_proj.weight.mul_(3.0)
        expected = full(torch.tensor([prompt])).logits[0, -1]
    policy.refresh(full)
    policy.runner.truncate(0, 0)
    torch.testing.assert_close(
        policy.runner.extend([0], [prompt]).logits[0], expected, atol=1e-4, rtol=0
    )


def test_both_rollout_forwards_train_and_max_seconds_ends_the_run(tmp_path: Path) -> None:
    for engine in ("compact", "transformers"):
        config = tiny_config(tmp_path, steps=5, max_seconds=1e-3, rollout_engine=engine)
        trainer = BaltoTrainer(
            config, build_tiny_llama(), build_tiny_tokenizer(), PROMPTS, WordLabeller()
        )
        logs = trainer.train()
        assert len(logs) == 1  # the first step passes the budget
        assert logs[0].updates == 2
        assert trainer.runner.backend == engine


def test_pool_labeller_matches_the_in_process_verifier() -> None:
    tokenizer = build_tiny_tokenizer()
    context = "Acme reported revenue of $12.4 billion in 2024. Jane Park is the CEO of Acme."
    responses = ["Acme reported revenue of $12.4 billion.", "Jane Park earned $9 billion in 1999."]
    requests = []
    for text in responses:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        requests.append((text, context, [tuple(s) for s in encoding["offset_mapping"]]))
    pool = PoolLabeller(2)
    try:
        got = pool.label_many(requests)
    finally:
        pool.close()
    expected = [VerifierLabeller()(*request) for request in requests]
    assert got == expected
    assert got[0].n_supported == got[0].n_claims > 0
    assert got[1].n_supported < got[1].n_claims

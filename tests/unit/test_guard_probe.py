"""The hallucination probe: fit on a tiny model's states, save, load, the layer sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from engine.model_runner import ModelRunner
from groundedqa.halueval import HaluEvalItem
from guard.probe import PROBE_FILE, GuardAssets, HallucinationProbe, find_guard_dir
from guardfit.probe_fit import AnswerStates, answer_states, sweep, train_probe


def make_runner(model: LlamaForCausalLM) -> ModelRunner:
    return ModelRunner(model, num_slots=2, max_model_len=64, max_candidates=4)


def test_probe_fit_save_load_round_trip(tiny_llama: LlamaForCausalLM, tmp_path: Path) -> None:
    runner = make_runner(tiny_llama)
    states, baselines = answer_states(runner, [5, 6, 7, 8], [9, 10, 11, 12, 13, 14], (0, 2))
    assert states[2].shape == (6, tiny_llama.config.hidden_size)
    assert set(baselines) == {"p_a", "entropy", "logprob", "cos", "f_tok"}
    assert all(len(v) == 6 for v in baselines.values())
    labels = np.array([0, 1, 0, 1, 1, 0])
    probe = train_probe(2, states[2].astype(np.float32), labels, c=1.0)
    path = tmp_path / PROBE_FILE
    probe.save(path)
    loaded = HallucinationProbe.load(path)
    assert loaded.layer == 2
    risk = loaded.risk(torch.from_numpy(states[2].astype(np.float32)))
    np.testing.assert_allclose(risk.numpy(), probe.risk_numpy(states[2]), atol=1e-5)
    assert find_guard_dir(tmp_path, "unknown-model") == tmp_path
    assets = GuardAssets.load(tmp_path)
    assert assets.calibration is None and assets.defaults(enabled=True).token_score == "probe"


def test_answer_states_match_the_full_forward(tiny_llama: LlamaForCausalLM) -> None:
    runner = make_runner(tiny_llama)
    prompt, answer = [5, 6, 7], [20, 21]
    states, baselines = answer_states(runner, prompt, answer, (1,))
    with torch.inference_mode():
        out = tiny_llama(torch.tensor([prompt + answer]), output_hidden_states=True)
    expected = out.hidden_states[1][0, 3:5].float().numpy()
    np.testing.assert_allclose(states[1].astype(np.float32), expected, atol=2e-3)
    logprobs = torch.log_softmax(out.logits[0, 2:4].float(), -1)
    np.testing.assert_allclose(baselines["logprob"], logprobs[[0, 1], answer].numpy(), atol=1e-5)


def test_sweep_picks_the_layer_that_separates() -> None:
    rng = np.random.default_rng(0)

    def record(correct: bool) -> AnswerStates:
        informative = rng.normal(0.0 if correct else 1.5, 1.0, size=(5, 8))
        noise = rng.normal(0.0, 1.0, size=(5, 8))
        return AnswerStates(0, "", correct, {3: informative, 7: noise}, {})

    fit = [record(i % 2 == 0) for i in range(60)]
    select = [record(i % 2 == 0) for i in range(40)]
    probe, scores, c, held_out = sweep(fit, select, (0.1, 1.0))
    assert probe.layer == 3
    assert scores[3] > 0.9 > scores[7] + 0.2
    assert held_out > 0.9 and c in (0.1, 1.0)


def test_collected_answers_are_cached_and_reused(
    tiny_llama: LlamaForCausalLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from guardfit import probe_fit

    made: list[int] = []

    def fake_batch(runner, tokenizer, items, layers, max_tokens):  # type: ignore[no-untyped-def]
        made.extend(item.line for item in items)
        return [AnswerStates(item.line, "x", True, {}, {}) for item in items]

    monkeypatch.setattr(probe_fit, "answer_batch", fake_batch)
    items = [
        HaluEvalItem(knowledge="k", question="q", right_answer="a", hallucinated_answer="b", line=n)
        for n in range(10, 15)
    ]
    first = probe_fit.collect(make_runner(tiny_llama), None, items, (0,), 8, 2, tmp_path)  # type: ignore[arg-type]
    again = probe_fit.collect(make_runner(tiny_llama), None, items, (0,), 8, 2, tmp_path)  # type: ignore[arg-type]
    assert made == [10, 11, 12, 13, 14]
    assert [r.line for r in first] == [r.line for r in again] == [10, 11, 12, 13, 14]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10.pkl", "12.pkl", "14.pkl"]

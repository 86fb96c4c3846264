"""GuardConfig: paper defaults, range checks naming the field, per-request merging."""

import pytest
from pydantic import ValidationError

from guard.config import GuardConfig

PAPER_DEFAULTS = {
    "num_candidates": 4,
    "lam": 0.6,
    "tau_token": 0.4,
    "alpha": 0.5,
    "beta": 0.3,
    "gamma": 0.2,
    "tau_low": 0.55,
    "tau_high": 0.75,
    "n_max": 3,
    "tau_global": 0.7,
    "delta_tau": 0.1,
    "m_max": 2,
    "clusters": 3,
    "score_temperature": 0.3,
    "sampling_temperature": 0.4,
}


def test_defaults_match_paper() -> None:
    config = GuardConfig()
    assert {name: getattr(config, name) for name in PAPER_DEFAULTS} == PAPER_DEFAULTS
    assert config.enabled is False
    assert config.fact_normalize_by_k is False
    assert (config.mode, config.on_failure, config.segment_boundary) == (
        "guard",
        "refuse",
        "sentence",
    )


def test_every_field_is_described() -> None:
    assert all(field.description for field in GuardConfig.model_fields.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_candidates", 0),
        ("num_candidates", 17),
        ("lam", 1.5),
        ("tau_token", -0.1),
        ("n_max", 11),
        ("chains", 0),
        ("clusters", 9),
        ("score_temperature", 0.0),
        ("sampling_temperature", -0.1),
        ("max_segment_tokens", 3),
        ("segment_boundary", "word"),
        ("on_failure", "ignore"),
        ("mode", "other"),
        ("refusal_message", ""),
    ],
)
def test_out_of_range_value_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        GuardConfig(**{field: value})
    assert field in str(info.value)


def test_greedy_sampling_temperature_allowed() -> None:
    assert GuardConfig(sampling_temperature=0.0).sampling_temperature == 0.0


def test_tau_low_above_tau_high_rejected() -> None:
    with pytest.raises(ValidationError, match="tau_low"):
        GuardConfig(tau_low=0.8, tau_high=0.7)


def test_all_zero_segment_weights_rejected() -> None:
    with pytest.raises(ValidationError, match="alpha"):
        GuardConfig(alpha=0.0, beta=0.0, gamma=0.0)


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError, match="tau_tokn"):
        GuardConfig(tau_tokn=0.5)


def test_merged_applies_overrides_over_server_defaults() -> None:
    base = GuardConfig(num_candidates=8, on_failure="truncate")
    merged = GuardConfig.merged(base, {"lam": 0.5, "enabled": True})
    assert (merged.lam, merged.enabled) == (0.5, True)
    assert (merged.num_candidates, merged.on_failure) == (8, "truncate")
    assert (base.lam, base.enabled) == (0.6, False)
    assert GuardConfig.merged(base, {}) == base


def test_merged_rejects_unknown_keys_and_revalidates() -> None:
    base = GuardConfig()
    with pytest.raises(ValidationError, match="bogus"):
        GuardConfig.merged(base, {"bogus": 1})
    with pytest.raises(ValidationError, match="tau_low"):
        GuardConfig.merged(base, {"tau_low": 0.9})
    with pytest.raises(ValidationError, match="num_candidates"):
        GuardConfig.merged(base, {"num_candidates": 99})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enabled", "yes"),
        ("enabled", 1),
        ("include_claims", "true"),
        ("chains", "2"),
        ("num_candidates", 4.0),
        ("lam", "0.5"),
        ("use_evidence", 0),
    ],
)
def test_values_are_not_coerced(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        GuardConfig.merged(GuardConfig(), {field: value})

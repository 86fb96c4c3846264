"""Request-level rules of the serving layer: which guard settings apply, what is refused."""

from __future__ import annotations

import pytest

from guard.config import GuardConfig
from server.errors import APIError
from server.plan import RequestPlan, plan_request, resolve_guard
from server.verification import ClaimChecker


def test_settings_without_enabled_turn_guarding_on() -> None:
    default = GuardConfig()
    assert resolve_guard({"chains": 2}, None, default) == GuardConfig(enabled=True, chains=2)
    assert resolve_guard({"enabled": False, "chains": 2}, None, default) is None
    assert resolve_guard({"chains": 2}, "off", default) is None
    assert resolve_guard({}, None, default) is None
    assert resolve_guard(None, "on", default) == GuardConfig(enabled=True)


def test_lax_guard_values_are_a_400_naming_the_field() -> None:
    with pytest.raises(APIError) as info:
        resolve_guard({"enabled": "yes"}, None, GuardConfig())
    assert info.value.status == 400
    assert info.value.body.param == "guard.enabled"


def plan(body: dict | None, has_probe: bool = True, stream: bool = False) -> RequestPlan:
    return plan_request(
        body,
        None,
        GuardConfig(),
        has_probe=has_probe,
        stream=stream,
        checker=ClaimChecker(),
        context="Paris is in France.",
    )


def test_plain_and_verify_plans_decode_plainly() -> None:
    assert plan(None) == RequestPlan("plain")
    assert plan({"mode": "verify"}) == RequestPlan("verify", check_claims=True)
    assert plan({"mode": "verify"}).sequences_per_choice == 1


def test_a_guarded_plan_holds_complete_settings() -> None:
    guarded = plan({"chains": 3, "prefer_supported": True, "include_claims": True}, stream=True)
    run = guarded.guard
    assert guarded.mode == "guard" and guarded.check_claims and run is not None
    assert guarded.sequences_per_choice == 3
    assert run.stream and not run.explore
    assert run.evidence is not None and run.answer_check is not None
    # token_score is settled once: the probe when the model has one, else the paper's cosine
    assert run.config.token_score == "probe"
    settled = plan({"use_evidence": False}, has_probe=False).guard
    assert settled is not None and settled.config.token_score == "paper"
    assert settled.evidence is None and settled.answer_check is None


def test_asking_for_a_probe_the_model_lacks_is_a_400() -> None:
    with pytest.raises(APIError) as info:
        plan({"token_score": "probe"}, has_probe=False)
    assert info.value.body.param == "guard.token_score"

"""Request-level rules of the serving layer: which guard settings apply, what is refused."""

from __future__ import annotations

import pytest

from guard.config import GuardConfig
from server.errors import APIError
from server.serving import resolve_guard


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

"""Error objects render whatever text a client sent, and validation errors name the field."""

from __future__ import annotations

import json

from server.errors import _location_param, model_not_found


def test_error_for_a_model_name_with_a_lone_surrogate_renders() -> None:
    response = model_not_found("M\ud800")
    rendered = json.loads(response.response().body)
    assert response.status == 404
    assert rendered["error"]["message"] == "The model 'M\ud800' does not exist."


def test_location_param_drops_body_and_union_tags() -> None:
    loc = ("body", "messages", 0, "content", "list[TextPart]", 0, "text")
    assert _location_param(loc) == "messages.0.content.0.text"
    assert _location_param(("body", "stop", "str")) == "stop"
    assert _location_param(("body",)) is None

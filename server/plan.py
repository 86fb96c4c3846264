"""A request's decoding plan, resolved once: plain, verify, or guarded with complete settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from guard.config import GuardConfig, GuardRun
from server.errors import invalid_request
from server.verification import ClaimChecker


@dataclass(frozen=True)
class RequestPlan:
    """How a request decodes.

    `guard` is set exactly in mode 'guard': Token-Guard on the guard engine, with the run's
    complete settings. 'plain' and 'verify' decode plainly on the plain engine. `check_claims`:
    the final output's report gets the answer's claims and their verdicts (verify mode, or a
    guarded request asking for `include_claims`).
    """

    mode: Literal["plain", "verify", "guard"]
    guard: GuardRun | None = None
    check_claims: bool = False

    @property
    def sequences_per_choice(self) -> int:
        """Engine sequences per choice: the guard's chains when Token-Guard decodes, else one."""
        return 1 if self.guard is None else self.guard.config.chains


def resolve_guard(
    body: dict[str, Any] | None, header: str | None, default: GuardConfig
) -> GuardConfig | None:
    """Guard settings of a request: body `guard` overrides, `X-Guard` header, server default.

    Settings in the body without `enabled` ask for guarding (`enabled: true`), unless the
    header says `off`; `{"enabled": false, ...}` stays off.
    """
    overrides = dict(body or {})
    if header is not None:
        value = header.strip().lower()
        if value not in ("on", "off"):
            raise invalid_request("X-Guard must be 'on' or 'off'", param="X-Guard")
        overrides.setdefault("enabled", value == "on")
    if overrides and "enabled" not in overrides:
        overrides["enabled"] = True
    try:
        config = GuardConfig.merged(default, overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        param = f"guard.{where}" if where else "guard"
        raise invalid_request(f"{param}: {first['msg']}", param=param) from exc
    return config if config.enabled else None


def plan_request(
    body: dict[str, Any] | None,
    header: str | None,
    default: GuardConfig,
    *,
    has_probe: bool,
    stream: bool,
    checker: ClaimChecker,
    context: str,
) -> RequestPlan:
    """The plan of a request from its `guard` field and `X-Guard` header (`resolve_guard`).

    A guarded plan settles `token_score` (unset: the probe when the model has one) and binds
    the claim checks its settings ask for to the conversation's `context`.
    """
    config = resolve_guard(body, header, default)
    if config is None:
        return RequestPlan("plain")
    if config.token_score == "probe" and not has_probe:
        raise invalid_request(
            "guard.token_score: this model has no hallucination probe ('paper' works)",
            param="guard.token_score",
        )
    if config.mode == "verify":
        return RequestPlan("verify", check_claims=True)
    token_score = config.token_score or ("probe" if has_probe else "paper")
    evidence = answer_check = None
    if config.use_evidence:
        evidence = functools.partial(checker.evidence, context=context)
    if config.prefer_supported and config.chains > 1:
        answer_check = functools.partial(checker.supported, context=context)
    run = GuardRun(
        config.model_copy(update={"token_score": token_score}),
        stream=stream,
        evidence=evidence,
        answer_check=answer_check,
    )
    return RequestPlan("guard", run, check_claims=config.include_claims)

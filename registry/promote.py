"""Promote a model version by alias (``champion``, ``challenger``, ...), only through a gate.

The default gate reads the version's lineage tags: validation must have passed
(``shipyard.validation.passed=true``) for the engine currently recorded on the version
(``shipyard.validation.engine_sha256 == shipyard.engine.sha256``); ``require_published`` also asks
for a published repository version.

Public: ``Gate`` (require_validation=True, require_published=False, max_served_p99_ms=None: the p99 measured
through the runtime during a canary rollout, tag ``shipyard.served.p99_ms``),
``gate_reasons(tags: Mapping[str, str], gate: Gate) -> list[str]`` (empty when the gate passes),
``promote(model_uri: str, alias: str, *, gate: Gate | None = None, tracking_uri: str | None = None) -> str``
(returns ``models:/NAME/VERSION``; raises PromotionRefused listing every failed check).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from shipyard.registry import lineage as L
from shipyard.registry.errors import PromotionRefused, RegistryError
from shipyard.registry.resolve import get_version
from shipyard.registry.store import get_client

SERVED_P99_MS = "shipyard.served.p99_ms"
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Gate:
    """What a version must show before an alias may point at it."""

    require_validation: bool = True
    require_published: bool = False
    # served p99 (ms) through the runtime at the recommended batching, as the canary rollout measured and tagged
    # it (``shipyard.served.p99_ms``, written by ``shipyard promotion``); None: not gated
    max_served_p99_ms: float | None = None


def gate_reasons(tags: Mapping[str, str], gate: Gate) -> list[str]:
    """Every reason the gate refuses a version with these tags (empty list: allowed)."""
    reasons: list[str] = []
    if gate.require_validation:
        passed = tags.get(L.VALIDATION_PASSED)
        if passed is None:
            reasons.append("not validated: run `shipyard validate` (no shipyard.validation.passed tag)")
        elif passed != "true":
            summary = tags.get(L.VALIDATION_SUMMARY, "")
            reasons.append(f"validation failed (shipyard.validation.passed={passed}); summary: {summary}")
        else:
            engine = tags.get(L.ENGINE_SHA256)
            validated = tags.get(L.VALIDATION_ENGINE_SHA256)
            if engine and validated and engine != validated:
                reasons.append(
                    f"the validated model ({validated[:12]}) is not the current engine ({engine[:12]}): "
                    "validate the new engine first"
                )
    if gate.max_served_p99_ms is not None:
        served = tags.get(SERVED_P99_MS)
        if served is None:
            reasons.append("served latency not measured: roll it out as a canary first (shipyard promotion), "
                           f"which tags {SERVED_P99_MS}")  # fmt: skip
        elif float(served) > gate.max_served_p99_ms:
            reasons.append(f"served p99 {float(served):.1f} ms > {gate.max_served_p99_ms:g} ms ({SERVED_P99_MS})")
    if gate.require_published and not tags.get(L.PUBLISHED_VERSION):
        reasons.append("not published: run `shipyard publish` (no shipyard.published.version tag)")
    return reasons


def promote(model_uri: str, alias: str, *, gate: Gate | None = None, tracking_uri: str | None = None) -> str:
    """Point ``alias`` at the version ``model_uri`` names, if the gate allows it.

    Raises: PromotionRefused (gate said no; the alias is left where it was), RegistryError (bad alias/URI),
    ModelVersionNotFound.
    """
    if not _ALIAS_RE.match(alias) or alias.lower() == "latest" or re.match(r"^v\d+$", alias):
        raise RegistryError(f"invalid alias {alias!r}: use a name such as 'champion' (not 'latest' or 'v<N>')")
    version = get_version(model_uri, tracking_uri)
    reasons = gate_reasons(dict(version.tags or {}), gate or Gate())
    versioned = f"models:/{version.name}/{version.version}"
    if reasons:
        raise PromotionRefused(versioned, alias, reasons)
    get_client(tracking_uri).set_registered_model_alias(version.name, alias, version.version)
    return versioned

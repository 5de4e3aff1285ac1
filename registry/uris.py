"""``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` parsing.

Public: ``ModelRef`` (name, version, alias; ``.uri``), ``parse_model_uri(uri: str) -> ModelRef``,
``is_model_uri(text: str) -> bool``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shipyard.registry.errors import RegistryError

_VERSION_RE = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_ALIAS_RE = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[A-Za-z0-9_\-]+)$")


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, by number or by alias (exactly one of them is set)."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        if self.version is not None:
            return f"models:/{self.name}/{self.version}"
        return f"models:/{self.name}@{self.alias}"


def is_model_uri(text: str) -> bool:
    """True for strings that look like a registry model URI."""
    return text.startswith("models:/")


def parse_model_uri(uri: str) -> ModelRef:
    """Parse a registry URI.

    Raises: RegistryError for anything but ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.
    """
    match = _VERSION_RE.match(uri)
    if match:
        return ModelRef(match["name"], version=int(match["version"]))
    match = _ALIAS_RE.match(uri)
    if match:
        return ModelRef(match["name"], alias=match["alias"])
    raise RegistryError(
        f"not a registered model URI: {uri!r}; use models:/NAME/VERSION (e.g. models:/digits/3) "
        "or models:/NAME@ALIAS (e.g. models:/digits@champion)"
    )

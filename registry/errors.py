"""Errors raised by ``shipyard.registry``; each message names the bad value and the fix."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: a registry operation could not be done (a user error: bad URI, name, or input)."""


class ModelVersionNotFound(RegistryError):
    """A ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` that the tracking server does not know."""


class PromotionRefused(RegistryError):
    """The promotion gate said no; ``reasons`` lists every failed check."""

    def __init__(self, uri: str, alias: str, reasons: list[str]) -> None:
        self.uri = uri
        self.alias = alias
        self.reasons = list(reasons)
        lines = "\n".join(f"  - {r}" for r in reasons)
        super().__init__(f"refusing to set alias {alias!r} on {uri}:\n{lines}")

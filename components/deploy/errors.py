"""Errors raised by the deploy step. Each message names what failed and what to do about it."""

from __future__ import annotations


class DeployError(RuntimeError):
    """A deployment could not be created, updated, found or started."""


class DeployTimeout(DeployError):
    """A deployment did not become ready within its timeout; the message carries the last status seen."""

"""The model manager for repositories in object storage: it syncs the local caches
(``remote.RepositoryMirrors``) before each scan the manager makes (start, poll, explicit load),
then scans the caches as local repositories. Everything else is ``ModelManager``'s."""

from __future__ import annotations

from typing import Any

from shipyard.serving_runtime.manager import ModelManager
from shipyard.serving_runtime.remote import RepositoryMirrors


class MirroredModelManager(ModelManager):
    """``ModelManager`` over ``mirrors.local_paths``; see the module docstring.

    Raises: as ``ModelManager``; ``start`` also raises ModelConfigError when a store cannot be listed.
    """

    def __init__(self, mirrors: RepositoryMirrors, **kwargs: Any) -> None:
        super().__init__(mirrors.local_paths, **kwargs)
        self.mirrors = mirrors

    async def start(self) -> None:
        await self.mirrors.refresh(initial=True)
        await super().start()

    async def poll(self) -> None:
        if self.control_mode == "poll":
            await self.mirrors.refresh()
        await super().poll()

    async def load(self, name: str, config_json: str | None = None) -> None:
        if self.control_mode == "explicit":
            await self.mirrors.refresh()
        await super().load(name, config_json)

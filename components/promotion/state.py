"""The promotion service's memory, one JSON file written atomically: what is serving, the rollout in progress,
prepared versions and accepted delivery ids. A restart reads it back, so nothing is deployed twice.

``State(path)``: ``accept_delivery(id, now) -> bool`` (False: a replay), ``get(section, key)``,
``put(section, key, value)``, ``drop(section, key)``, ``snapshot() -> dict``. Sections: ``serving``
(model -> {"version", "repo_version"}), ``rollout`` (model -> in-progress rollout), ``prepared``
("name/version" -> {"ok", "onnx", "engine", "batching", "reason"}).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

_KEEP_DELIVERIES_S = 24 * 3600.0


class State:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {"serving": {}, "rollout": {}, "prepared": {}, "deliveries": {}}
        if self.path.is_file():
            loaded = json.loads(self.path.read_text())
            for section in self._data:
                self._data[section].update(loaded.get(section, {}))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def accept_delivery(self, delivery_id: str, now: float) -> bool:
        """Record a delivery id; False when it was seen before (a replay)."""
        with self._lock:
            seen = self._data["deliveries"]
            if delivery_id in seen:
                return False
            for old in [d for d, t in seen.items() if now - t > _KEEP_DELIVERIES_S]:
                del seen[old]
            seen[delivery_id] = now
            self._save()
            return True

    def get(self, section: str, key: str) -> Any:
        with self._lock:
            value = self._data[section].get(key)
            return json.loads(json.dumps(value)) if value is not None else None

    def put(self, section: str, key: str, value: Any) -> None:
        with self._lock:
            self._data[section][key] = value
            self._save()

    def drop(self, section: str, key: str) -> None:
        with self._lock:
            if self._data[section].pop(key, None) is not None:
                self._save()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps({k: v for k, v in self._data.items() if k != "deliveries"}))

"""Put the SDK's sources (src/streamorch/client) into the `streamorch-client` wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        package = Path(self.root).resolve().parents[1] / "src" / "streamorch" / "client"
        if not (package / "__init__.py").is_file():
            raise FileNotFoundError(f"the SDK's sources are not at {package}")
        build_data["force_include"][str(package)] = "streamorch/client"

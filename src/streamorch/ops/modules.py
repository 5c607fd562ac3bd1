"""Optional modules, imported safely.

A missing optional module costs only its feature: one warning says what is lost
and how to get it back, health lists it as `unavailable`, everything else runs.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptionalModule:
    name: str
    feature: str
    install: str


OPTIONAL = (
    OptionalModule(
        "psutil",
        "system metrics (CPU, memory, disk) in /health",
        "pip install 'streamorch[system-metrics]'",
    ),
)


@dataclass
class ModuleStatus:
    status: str  # available | unavailable
    feature: str
    reason: str | None = None
    install: str | None = None


def safe_import(spec: OptionalModule, registry: dict[str, ModuleStatus]) -> ModuleType | None:
    try:
        module = importlib.import_module(spec.name)
    except ImportError as exc:
        registry[spec.name] = ModuleStatus("unavailable", spec.feature, str(exc), spec.install)
        log.warning(
            "optional module %s is missing: %s is unavailable",
            spec.name,
            spec.feature,
            extra={
                "action": "optional_module_missing",
                "optional_module": spec.name,
                "fix": spec.install,
            },
        )
        return None
    registry[spec.name] = ModuleStatus("available", spec.feature)
    return module


def load_optional() -> tuple[dict[str, ModuleType | None], dict[str, ModuleStatus]]:
    registry: dict[str, ModuleStatus] = {}
    modules = {spec.name: safe_import(spec, registry) for spec in OPTIONAL}
    return modules, registry

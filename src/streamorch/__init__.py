"""Stream Orchestrator: keeps every enabled stream running on exactly one healthy worker."""

__version__ = "0.1.0"

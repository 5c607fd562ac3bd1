"""The reference documentation names every setting, exit code, problem code and event kind."""

from __future__ import annotations

from pathlib import Path

from streamorch.config import Settings
from streamorch.ops.startup import ExitCode

DOCS = Path(__file__).parents[2] / "docs"


def test_every_setting_is_documented():
    text = (DOCS / "reference" / "configuration.md").read_text()
    for info in Settings.model_fields.values():
        for name in info.json_schema_extra["env"]:
            assert f"`{name}`" in text, name


def test_every_exit_code_is_documented():
    text = (DOCS / "reference" / "exit-codes.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in text, code.name


def test_every_problem_code_is_in_the_troubleshooting_guide():
    import re

    source = Path(__file__).parents[2] / "src" / "streamorch"
    codes = set()
    for path in source.rglob("*.py"):
        codes |= set(
            re.findall(
                r'"((?:config|postgres|redis|embedded|api|startup|doctor|reconciler|module)\.[a-z_]+)"',
                path.read_text(),
            )
        )
    assert len(codes) > 20  # the pattern still finds the codes
    guide = (DOCS / "troubleshooting.md").read_text()
    missing = sorted(code for code in codes if f"`{code}`" not in guide)
    assert missing == []


def test_every_event_kind_is_documented():
    import re

    package = Path(__file__).parents[2] / "src" / "streamorch"
    source = [*(package / "store").rglob("*.py"), *(package / "core").rglob("*.py")]
    text = "\n".join(path.read_text() for path in source)
    kinds = set(re.findall(r'Event\(\s*"([a-z_]+)"', text))
    kinds |= set(re.findall(r'"([a-z_]+)" if created else "([a-z_]+)"', text)[0])
    kinds |= set(re.findall(r'"kinds": \["([a-z_]+)"\]', text))
    assert {"assigned", "moved", "drained", "stream_updated", "revoked"} <= kinds
    reference = (DOCS / "reference" / "events.md").read_text()
    assert sorted(k for k in kinds if f"| `{k}` |" not in reference) == []

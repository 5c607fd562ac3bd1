"""The SDK as a worker host installs it: the `streamorch-client` wheel holds the SDK's
sources and needs only httpx; it is typed; every public name is documented."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import streamorch.client
from tests.e2e.harness import ROOT

CLIENT = ROOT / "src" / "streamorch" / "client"

# What the SDK may import besides the standard library: httpx and its own dependencies.
ALLOWED = {"httpx", "httpcore", "anyio", "h11", "certifi", "idna", "sniffio", "typing_extensions"}

GUARD = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    ALLOWED = set(sys.argv[2].split(","))

    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top == "streamorch":
                if name != "streamorch" and not name.startswith("streamorch.client"):
                    raise ImportError(f"the SDK imported {name}")
            elif top not in ALLOWED and top not in sys.stdlib_module_names:
                raise ImportError(f"the SDK imported {name}")
            return None

    sys.meta_path.insert(0, Guard())
    # The checkout's own `streamorch` (installed in editable mode) must not be found.
    sys.path[:] = [sys.argv[1]] + [p for p in sys.path if not p.startswith(sys.argv[3])]
    import streamorch.client
    for info in pkgutil.iter_modules(streamorch.client.__path__, "streamorch.client."):
        importlib.import_module(info.name)
    print("imported", streamorch.client.__file__)
    """
)


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--disable-pip-version-check", "-q", "-w", str(out), str(ROOT / "clients/python")),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("streamorch_client-*.whl")
    return wheel


def test_the_worker_host_wheel_is_the_sdk_and_needs_only_httpx(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if ".dist-info/" not in n]
        metadata = Parser().parsestr(
            archive.read(next(n for n in archive.namelist() if n.endswith("/METADATA"))).decode()
        )
        archive.extractall(tmp_path / "site")
    sources = sorted(
        f"streamorch/client/{p.relative_to(CLIENT)}"
        for p in CLIENT.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert sorted(names) == sources  # the same files, nothing of the server
    assert "streamorch/client/py.typed" in names
    assert "streamorch/__init__.py" not in names  # never replaces the full package's
    assert metadata.get_all("Requires-Dist") == ["httpx>=0.27"]
    assert metadata["Version"] == __import__("streamorch").__version__

    # Imported from the wheel's files, with everything but httpx (and the standard
    # library) refused: the server's dependencies are installed here, but never used.
    result = subprocess.run(
        [
            *(sys.executable, "-I", "-c", GUARD),
            *(str(tmp_path / "site"), ",".join(ALLOWED), str(ROOT / "src")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "site") in result.stdout


def test_the_httpx_requirement_matches_the_full_package() -> None:
    full = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())
    assert client["project"]["dependencies"] == [d for d in full if d.startswith("httpx")]


def test_the_package_is_typed() -> None:
    assert (CLIENT / "py.typed").is_file()
    assert (CLIENT.parent / "py.typed").is_file()


def test_the_public_names_are_pinned() -> None:
    # A name added or removed here is a change of the SDK's public API: say so in the
    # changelog and in docs/howto/worker-sdk.md, then update this list.
    assert streamorch.client.__all__ == [
        "DEFAULT_SERVER",
        "APIError",
        "AdminClient",
        "Assignment",
        "AsyncWorker",
        "ClientError",
        "Connection",
        "Desired",
        "Registration",
        "TransportError",
        "Worker",
    ]
    assert all(hasattr(streamorch.client, name) for name in streamorch.client.__all__)


def test_the_sdk_imports_nothing_of_the_server() -> None:
    # Read from the sources, so a lazy import inside a function counts too.
    outside = []
    for path in sorted(CLIENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            outside += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] == "streamorch" and not n.startswith("streamorch.client")
            ]
    assert not outside


def public_members(obj: type) -> list[tuple[str, object]]:
    found = []
    for name, member in vars(obj).items():
        if name.startswith("_") and name != "__init__":
            continue
        if name == "__init__" and obj.__init__ is object.__init__:
            continue
        if isinstance(member, property | staticmethod | classmethod) or inspect.isfunction(member):
            found.append((name, member))
    return found


@pytest.mark.parametrize("name", streamorch.client.__all__)
def test_every_public_name_is_documented(name: str) -> None:
    obj = getattr(streamorch.client, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return  # a constant: documented in the module docstring
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if not inspect.isclass(obj):
        return
    missing = [
        member
        for member, value in public_members(obj)
        if member != "__init__"
        and not inspect.getdoc(value.fget if isinstance(value, property) else value)
    ]
    assert not missing, f"{name}: no docstring on {missing}"
    init = vars(obj).get("__init__")
    if init is not None and not getattr(obj, "__dataclass_fields__", None):
        params = [p for p in inspect.signature(init).parameters if p != "self"]
        text = inspect.getdoc(obj) or ""
        undocumented = [p for p in params if f"{p}:" not in text and f"`{p}`" not in text]
        assert not undocumented, f"{name}: parameters not documented: {undocumented}"

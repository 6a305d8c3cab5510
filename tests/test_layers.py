"""Imports flow one way: every module imports only from its own package or from layers below it.

Lazy imports inside functions count too: a cycle hidden in a function body is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pigeon

# Bottom first. A module may import from its own entry or from any entry listed before it.
LAYERS = [
    ["pigeon._version", "pigeon.errors", "pigeon.io", "pigeon.progress", "pigeon.offline"],
    ["pigeon.config"],
    # plots draws numbers, it knows no engine; configfile reads and writes option files for config
    ["pigeon.data", "pigeon.models", "pigeon.metrics", "pigeon.calibration", "pigeon.plots", "pigeon.configfile"],
    ["pigeon.engine", "pigeon.tracking"],  # tracking is fed by the engine's events hook, it does not import it
    ["pigeon.deploy", "pigeon.audits", "pigeon.tuning", "pigeon.experiments"],
    ["pigeon.api"],
    ["pigeon.serve"],  # the app and REST API, on the public verbs
    ["pigeon"],  # the public __init__
    ["pigeon.cli"],
    ["pigeon.__main__"],
]
ROOT = Path(pigeon.__file__).parent


def _unit(module: str) -> str:
    """The LAYERS entry a module belongs to: its top-level package or module under pigeon."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else "pigeon"


def _level(module: str) -> int:
    unit = _unit(module)
    return next(i for i, names in enumerate(LAYERS) if unit in names)


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pigeon":
            # `from pigeon import plots` imports the submodule pigeon.plots, not the public face
            subs = [f"pigeon.{a.name}" for a in node.names if (ROOT / a.name).exists()
                    or (ROOT / f"{a.name}.py").exists()] if node.module == "pigeon" else []
            found += subs or [node.module]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "pigeon"]
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_every_module_has_a_layer() -> None:
    assert [m for m in _modules() if not any(_unit(m) in names for names in LAYERS)] == []


def test_layers_only_look_down() -> None:
    upward = [f"{module} imports {target}" for module, path in _modules().items() for target in _imports(path)
              if _unit(target) != _unit(module) and _level(target) >= _level(module)]
    assert upward == []


def test_the_checker_sees_a_lazy_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pigeon.api import load\n    from pigeon import plots\n")
    assert _imports(bad) == ["pigeon.api", "pigeon.plots"]
    assert _level("pigeon.api") > _level("pigeon.deploy.bench") > _level("pigeon.engine.checkpoint")


def test_the_version_has_one_home() -> None:
    from pigeon._version import __version__

    text = (ROOT.parent / "pyproject.toml").read_text()  # no tomllib before Python 3.11
    assert 'dynamic = ["version"]' in text and 'version = { attr = "pigeon._version.__version__" }' in text
    assert "\nversion =" not in text.split("[tool.setuptools.dynamic]")[0]  # no second, static version
    assert pigeon.__version__ == __version__

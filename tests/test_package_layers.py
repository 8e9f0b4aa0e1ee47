"""The package reads in pipeline order: each module imports only what stands to its right.

    commands -> workbench -> streaming -> storage -> ingest -> clients -> exchange, infra
             -> settings -> names, errors, symbols, resources

Imports inside functions count too (a lazy import is still a dependency). Read from the source with
`ast`, so this needs neither the JVM nor any service.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import btcstream

PACKAGE = Path(btcstream.__file__).resolve().parent
# Left to right: a module may import its own layer and any later one.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__main__", "cli", "commands"}),
    frozenset({"workbench"}),
    frozenset({"streaming"}),
    frozenset({"analytics"}),
    frozenset({"storage"}),
    frozenset({"ingest"}),
    frozenset({"clients"}),
    frozenset({"exchange", "infra"}),
    frozenset({"settings"}),
    frozenset({"names", "errors", "symbols", "resources"}),
)
LAYER_OF = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str | None:
    """`btcstream.storage.readers` -> `storage`; None for the package itself or other packages."""
    parts = module.split(".")
    return parts[1] if parts[0] == "btcstream" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def btcstream_imports(path: Path) -> set[str]:
    """Every `btcstream...` module a source file imports, at any depth of the file."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.startswith("btcstream"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("btcstream"):
            if node.module == "btcstream":  # `from btcstream import names`: each name is a module
                imported.update(f"btcstream.{alias.name}" for alias in node.names)
            else:
                imported.add(node.module)
    return imported


def source_files() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {unit_of(module_name(path)) for path in source_files()} - {None}
    assert units <= set(LAYER_OF), f"give these a place in LAYERS: {sorted(units - set(LAYER_OF))}"


def test_modules_import_only_what_stands_to_their_right() -> None:
    wrong = []
    for path in source_files():
        importer = unit_of(module_name(path))
        if importer is None:
            continue
        for imported in btcstream_imports(path):
            target = unit_of(imported)
            if target is not None and target != importer and LAYER_OF[target] < LAYER_OF[importer]:
                wrong.append(f"{module_name(path)} imports {imported}")
    assert not wrong, "imports against the pipeline order:\n" + "\n".join(sorted(wrong))


def test_the_producer_runs_live_without_the_replay_exchange() -> None:
    offenders = [module_name(path) for path in (PACKAGE / "ingest").rglob("*.py")
                 if any(unit_of(name) == "exchange" for name in btcstream_imports(path))]
    assert offenders == []


@pytest.mark.parametrize("arguments", [["--help"], ["data", "ls"], ["infra", "status"], ["status", "--help"]])
def test_cli_commands_that_need_no_spark_import_no_pyspark(arguments: list[str], tmp_path: Path) -> None:
    """`btcstream --help`, `data ls` and `infra status` run without loading the JVM libraries."""
    (tmp_path / "store").mkdir()
    probe = ("import runpy, sys\n"
             f"sys.argv = ['btcstream', *{arguments!r}]\n"
             "try:\n    runpy.run_module('btcstream', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('PYSPARK-LOADED' if any(m.split('.')[0] == 'pyspark' for m in sys.modules) else 'NO-PYSPARK')\n")
    env = {"BTCSTREAM_STORAGE_ROOT": f"file://{tmp_path}/store", "BTCSTREAM_STATE_DIR": str(tmp_path / "state"),
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120,
                            cwd=tmp_path)
    assert result.stdout.strip().endswith("NO-PYSPARK"), result.stdout + result.stderr

"""btcstream works installed, not only editable: package data is found wherever the command runs.

The fast tests check the editable install this suite runs in. The `install` tests build a wheel
install (`pip install`, not `-e`) into a fresh venv, then run `btcstream` from a directory that is
neither the repository nor the venv: `--help`, `report --only 03` over a file-sink store, and the
whole `demo` on the local stack. The install uses a copy of what the Docker image copies
(pyproject.toml, README.md, lib/, notebooks/), so pip's in-tree build never writes into the
working tree; pip's cache makes it quick after the first run (pyspark is built once).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from btcstream import resources
from btcstream.infra.artifacts import COMPONENTS
from btcstream.settings import Settings
from btcstream.workbench.report import HOURLY_NOTEBOOK, NOTEBOOKS, PLOTLY_JS_FILE, STYLESHEET_FILE
from helpers.delta_tables import write_table
from helpers.hourly import hourly_frame

REPO = Path(__file__).resolve().parents[2]
INSTALLED_FROM = ("pyproject.toml", "README.md", "lib", "notebooks")  # what docker/Dockerfile copies too
PIP_TIMEOUT_S = 1200  # the first run downloads and builds pyspark
REPORT_TIMEOUT_S = 600
DEMO_TIMEOUT_S = 1200
HEAVY_MODULES = ("pandas", "numpy", "pyspark", "pyarrow", "papermill", "nbconvert", "plotly")
# Run by the installed interpreter: where its package data is, and what importing it pulled in.
WHERE_IS_PACKAGE_DATA = """
import json, sys
from btcstream import resources
paths = {"config": resources.default_config_file(), "poms": resources.pom_dir(), "notebooks": resources.notebook_dir()}
heavy = sorted(set(sys.argv[1:]) & set(sys.modules))
import btcstream
print(json.dumps({"package": btcstream.__file__, "heavy": heavy, **{key: str(path) for key, path in paths.items()}}))
"""


# --- the editable install this suite runs in ----------------------------------------------------

def test_package_data_is_found_in_the_editable_install() -> None:
    assert resources.notebook_dir().resolve() == REPO / "notebooks"  # the symlink to the canonical folder
    assert all((resources.notebook_dir() / name).is_file() for name in NOTEBOOKS)
    assert all((resources.pom_dir() / component / "pom.xml").is_file() for component in COMPONENTS)
    assert resources.default_config_file().is_file()


def test_finding_package_data_imports_nothing_heavy() -> None:
    done = subprocess.run([sys.executable, "-c", WHERE_IS_PACKAGE_DATA, *HEAVY_MODULES], capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(done.stdout)["heavy"] == []


# --- a wheel install in a fresh venv ------------------------------------------------------------

class Installed:
    """A fresh venv with btcstream installed from a copy of the repository's package files."""

    def __init__(self, root: Path) -> None:
        self.venv = root / "venv"
        self.source = root / "source"
        self.elsewhere = root / "elsewhere"  # the directory the commands run from
        self.pip_seconds = 0.0

    def install(self) -> None:
        self.source.mkdir()
        for name in INSTALLED_FROM:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, self.source / name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints"))
            else:
                shutil.copy2(path, self.source / name)
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True, timeout=120)
        started = time.monotonic()
        done = subprocess.run([str(self.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", str(self.source)],
                              capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=self.env())
        self.pip_seconds = time.monotonic() - started
        assert done.returncode == 0, f"pip install failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        self.elsewhere.mkdir()

    def env(self, settings: dict[str, str] | None = None) -> dict[str, str]:
        """This process's environment minus every btcstream/Python/venv override, plus `settings`."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("BTCSTREAM_", "PYTHON", "VIRTUAL_ENV", "JUPYTER"))}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # as if the venv were activated
        env.update({f"BTCSTREAM_{key.upper()}": value for key, value in (settings or {}).items()})
        return env

    def run(self, *arguments: str, settings: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one of the venv's programs from `cwd` (default: the `elsewhere` directory)."""
        return subprocess.run([str(self.venv / "bin" / arguments[0]), *arguments[1:]], cwd=cwd or self.elsewhere,
                              env=self.env(settings), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Installed]:
    target = Installed(tmp_path_factory.mktemp("install"))
    try:
        target.install()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"\npip install (non-editable, fresh venv) took {target.pip_seconds:.0f} s")
        yield target
    finally:  # the venv is over 1 GB (pyspark); the reports stay for a look after a failure
        shutil.rmtree(target.venv, ignore_errors=True)
        shutil.rmtree(target.source, ignore_errors=True)


def stack_settings(settings: Settings) -> dict[str, str]:
    """The BTCSTREAM_* values that point a subprocess at the tests' stack and test area."""
    return {"kafka_bootstrap": settings.kafka_bootstrap, "topic": settings.topic, "trades_topic": settings.trades_topic,
            "storage_root": settings.storage_root, "webhdfs_port": str(settings.webhdfs_port),
            "state_dir": str(settings.state_dir), "cache_dir": str(settings.cache_dir), "spark_master": "local[2]"}


def notebook_errors(executed: Path) -> list[str]:
    notebook = nbformat.read(str(executed), as_version=4)
    return [f"{o['ename']}: {o['evalue']}" for c in notebook.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.integration
@pytest.mark.install
def test_installed_package_finds_its_data_in_site_packages(installed: Installed) -> None:
    done = installed.run("btcstream", "--help")
    assert done.returncode == 0 and "report" in done.stdout, done.stderr

    done = installed.run("python", "-c", WHERE_IS_PACKAGE_DATA, *HEAVY_MODULES)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    site_packages = installed.venv.resolve() / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    for key in ("package", "config", "poms", "notebooks"):
        path = Path(found[key]).resolve()
        assert path.is_relative_to(site_packages / "site-packages") and not path.is_relative_to(REPO), (key, path)
    assert Path(found["config"]).read_bytes() == resources.default_config_file().read_bytes()
    assert all((Path(found["poms"]) / component / "pom.xml").is_file() for component in COMPONENTS)
    notebooks = Path(found["notebooks"])
    assert not notebooks.is_symlink() and sorted(p.name for p in notebooks.iterdir()) == sorted(NOTEBOOKS)
    assert all((notebooks / name).read_bytes() == (REPO / "notebooks" / name).read_bytes() for name in NOTEBOOKS)
    assert found["heavy"] == []


@pytest.mark.integration
@pytest.mark.install
def test_installed_report_runs_from_another_directory(installed: Installed, tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_table(Settings(storage_root=f"file://{store}"), "hourly_metrics", hourly_frame(hours=5))

    done = installed.run("btcstream", "report", "--only", "03", settings={"storage_root": f"file://{store}"},
                         timeout=REPORT_TIMEOUT_S)

    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    reports = installed.elsewhere / "reports"
    assert f"open {reports / 'index.html'}" in done.stdout
    html = reports / HOURLY_NOTEBOOK.replace(".ipynb", ".html")
    assert notebook_errors(reports / HOURLY_NOTEBOOK) == []
    assert html.stat().st_size < 200_000 and "BTCUSDT" in html.read_text(encoding="utf-8")
    assert {PLOTLY_JS_FILE, STYLESHEET_FILE, "index.html", HOURLY_NOTEBOOK} <= {p.name for p in reports.iterdir()}


@pytest.mark.integration
@pytest.mark.install
def test_installed_demo_runs_from_another_directory(installed: Installed, local_stack: Settings) -> None:
    settings = local_stack.replace(topic=(topic := f"test-{uuid.uuid4().hex[:10]}"), trades_topic=f"{topic}-trades",
                                   storage_root=local_stack.storage_url(uuid.uuid4().hex[:8]))
    demo_dir = installed.elsewhere / "demo"
    demo_dir.mkdir()

    started = time.monotonic()
    done = installed.run("btcstream", "demo", settings=stack_settings(settings), cwd=demo_dir,
                         timeout=DEMO_TIMEOUT_S)
    print(f"btcstream demo took {time.monotonic() - started:.0f} s")

    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    reports = demo_dir / "reports"
    assert f"open {reports / 'index.html'}" in done.stdout
    for name in NOTEBOOKS:
        assert notebook_errors(reports / name) == [], name
    pages = [reports / name.replace(".ipynb", ".html") for name in NOTEBOOKS]
    assert sum(page.stat().st_size for page in pages) < 2_000_000  # four small pages plus one plotly.js
    assert [p.name for p in reports.glob("*.js")] == [PLOTLY_JS_FILE]

"""Where the files btcstream ships beside its code are: settings defaults, Maven POMs, notebooks.

They are package data, found through `importlib.resources`, so they are the same in an editable
install (`pip install -e .`) and an installed wheel, wherever the command runs from:

- `btcstream.yaml`: the documented defaults of `btcstream.settings.Settings`;
- `maven/<component>/pom.xml`: one POM per JVM component (`btcstream.infra.artifacts`);
- `notebooks/`: the workbench notebooks `btcstream report` executes. In the repository this is a
  symlink to the top-level `notebooks/` (where JupyterLab users open them); a wheel holds copies.

Not for: the Hadoop/Kafka/Spark files of docker-compose (they stay in the repository's `config/`).
Imports nothing heavy: settings and the CLI read it at start-up.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from btcstream.errors import BtcstreamError


def package_dir() -> Path:
    """This package's directory on disk (pip always installs packages unpacked)."""
    root = files(__name__)
    if not isinstance(root, Path):
        raise BtcstreamError(f"btcstream's resources are not on a file system ({root!r}); install it with pip")
    return root


def default_config_file() -> Path:
    """The committed defaults of every setting."""
    return package_dir() / "btcstream.yaml"


def pom_dir() -> Path:
    """The folder holding `<component>/pom.xml` for each JVM component."""
    return package_dir() / "maven"


def notebook_dir() -> Path:
    """The folder of the workbench notebooks (01_start_pipeline.ipynb, ...)."""
    return package_dir() / "notebooks"

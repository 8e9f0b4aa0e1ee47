"""Finding the `java` that runs the local Kafka broker and HDFS."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from btcstream.errors import InfraError


def java_executable() -> str:
    """`$JAVA_HOME/bin/java`, else `java` on PATH; a clear error naming the fix when neither exists."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise InfraError("`java` was not found: install a Java 17+ runtime (apt-get install openjdk-17-jre-headless, "
                         "or `conda install openjdk=17`) or set JAVA_HOME")
    return found

"""Resolve the JVM artifacts btcstream runs (Kafka broker, HDFS, Spark's Kafka connector, Delta Lake) once.

Each component has its own tiny POM, package data under `btcstream/resources/maven/<component>/`, so
the dependency sets never force one version of a shared library (jackson, slf4j) on each
other. Maven copies the runtime jars into `<cache_dir>/jars/<component>/`; after that everything
works offline.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from btcstream.errors import InfraError
from btcstream.resources import pom_dir
from btcstream.settings import Settings

log = logging.getLogger(__name__)

POM_DIR = pom_dir()
COMPONENTS = ("kafka", "hdfs", "spark-kafka", "delta")
SPARK_COMPONENTS = ("spark-kafka", "delta")  # jars a SparkSession loads (`spark_jars`)
_COMPLETE_MARKER = ".complete"
_VERSIONED_JAR = re.compile(r"^(?P<name>.+?)-\d[\w.+-]*\.jar$")


def jar_dir(settings: Settings, component: str) -> Path:
    """Where the jars of one component live once resolved."""
    return settings.cache_dir / "jars" / component


def is_resolved(settings: Settings, component: str) -> bool:
    """True when a previous resolution of `component` finished (so no network is needed)."""
    return (jar_dir(settings, component) / _COMPLETE_MARKER).exists()


def resolve(settings: Settings, component: str) -> Path:
    """Resolve one component into the cache (a no-op when already there); returns its jar directory."""
    if component not in COMPONENTS:
        raise InfraError(f"unknown JVM component {component!r}; expected one of {', '.join(COMPONENTS)}")
    target = jar_dir(settings, component)
    if is_resolved(settings, component):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError("Maven (`mvn`) is not on PATH: install it (apt-get install maven, or conda's maven) "
                         "so btcstream can fetch the Kafka/HDFS/connector jars once")
    pom = POM_DIR / component / "pom.xml"
    staging = target.with_name(component + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    log.info("resolving %s jars from Maven Central into %s (first run only)...", component, target)
    command = [mvn, "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(line for line in done.stdout.splitlines() if "[ERROR]" in line)[-1500:]
        offline = any(word in done.stdout for word in ("UnknownHost", "Could not transfer", "Connection refused",
                                                      "Network is unreachable", "timed out"))
        hint = ("Maven Central is unreachable: connect to the internet (or a Maven mirror in ~/.m2/settings.xml) "
                "for this first run; afterwards btcstream works offline") if offline else "see the Maven output above"
        raise InfraError(f"could not resolve the {component} jars: {hint}\n{tail}")
    jars = sorted(staging.glob("*.jar"))
    if not jars:
        raise InfraError(f"Maven resolved no jars for {component} ({pom})")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (target / _COMPLETE_MARKER).write_text("\n".join(j.name for j in jars) + "\n")
    log.info("resolved %d %s jars", len(jars), component)
    return target


def resolve_all(settings: Settings) -> None:
    """Resolve every component, printing progress on stderr."""
    for index, component in enumerate(COMPONENTS, start=1):
        state = "cached" if is_resolved(settings, component) else "resolving"
        print(f"[{index}/{len(COMPONENTS)}] {component} jars: {state}", file=sys.stderr, flush=True)
        resolve(settings, component)


def classpath(settings: Settings, component: str) -> str:
    """The Java classpath of a component (resolving it first if needed)."""
    return ":".join(str(jar) for jar in sorted(resolve(settings, component).glob("*.jar")))


def spark_jars(settings: Settings, components: tuple[str, ...] = SPARK_COMPONENTS) -> list[Path]:
    """The jars of Spark's Kafka connector and of Delta Lake that pyspark does not already bundle.

    Jars pyspark ships (scala-library, lz4, snappy, slf4j, hadoop-client, jackson, parquet) are
    left out so a component never shadows Spark's own copies; a jar two components share is
    listed once.
    """
    import pyspark

    bundled = {_artifact_name(j.name) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    chosen: dict[str, Path] = {}
    for component in components:
        for jar in sorted(resolve(settings, component).glob("*.jar")):
            name = _artifact_name(jar.name)
            if name not in bundled:
                chosen.setdefault(name, jar)
    return sorted(chosen.values())


def _artifact_name(file_name: str) -> str:
    match = _VERSIONED_JAR.match(file_name)
    return match.group("name") if match else file_name

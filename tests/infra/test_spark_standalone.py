"""A real Spark standalone master + worker from pyspark's spark-class runs a job submitted to spark://."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from btcstream.errors import InfraError
from btcstream.infra import processes
from btcstream.infra.spark_standalone import StandaloneCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# Runs in its own process: one JVM can hold only one SparkContext, and other tests may own it.
DRIVER = textwrap.dedent("""
    import json, os, sys
    from btcstream.settings import Settings
    from btcstream.clients.spark import spark_session
    spark = spark_session(Settings(spark_master=sys.argv[1]), "standalone-smoke", with_kafka=False)
    # A Python lambda runs in a Python worker on the executor, not in the driver.
    executor_pids = spark.sparkContext.parallelize(range(4), 2).map(lambda _: os.getpid()).distinct().collect()
    total = spark.range(1000).selectExpr("sum(id) AS total").first()["total"]
    print(json.dumps({"master": spark.sparkContext.master, "total": total,
                      "executor_pids": executor_pids, "driver_pid": os.getpid()}))
    spark.stop()
""")


def driver_env() -> dict[str, str]:
    """Environment of a driver process submitting to the loopback cluster (no UI on the shared port 4040)."""
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_SUBMIT_ARGS": "--conf spark.ui.enabled=false pyspark-shell"}


def test_a_job_submitted_to_the_standalone_master_runs_on_its_worker(tmp_path):
    with StandaloneCluster(tmp_path / "spark", cores=1, memory="1g") as cluster:
        assert cluster.master_url.startswith("spark://127.0.0.1:")
        status = cluster.status()
        assert status.ready and status.alive_workers == 1 and status.cores == 1 and status.memory_mib == 1024

        done = subprocess.run([sys.executable, "-c", DRIVER, cluster.master_url], capture_output=True, text=True,
                              env=driver_env(), timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["master"] == cluster.master_url
        assert result["total"] == sum(range(1000))
        assert result["executor_pids"] and result["driver_pid"] not in result["executor_pids"]
        assert "standalone-smoke" in cluster.status().completed_apps
        pids = [processes.read_pid(cluster.work_dir / f"{role}.pid") for role in ("master", "worker")]
    for pid in pids:
        assert not processes.is_alive(pid, str(cluster.work_dir)), f"pid {pid} still running after stop()"
    with pytest.raises(InfraError):
        cluster.status()


def test_status_before_start_is_a_clear_error(tmp_path):
    with pytest.raises(InfraError, match="not started"):
        StandaloneCluster(tmp_path).status()

"""The session's JVM runs with the options `spark_session` gives it (a real local Spark)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.spark


def _jvm_flag(spark, name: str) -> str:
    bean = spark._jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        spark._jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    return bean.getVMOption(name).getValue()


def test_huge_generated_methods_are_jit_compiled(spark) -> None:
    """Whole-stage code generation writes methods above HotSpot's 8,000-byte limit for wide stages;
    interpreted, the job's classification of Kafka records ran 2.3x slower."""
    assert _jvm_flag(spark, "DontCompileHugeMethods") == "false"


def test_the_jvm_clock_is_utc(spark) -> None:
    assert spark._jvm.java.util.TimeZone.getDefault().getID() == "UTC"

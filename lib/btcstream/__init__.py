"""btcstream: live Bitcoin market structure through Kafka and Spark into Parquet on HDFS."""

__version__ = "0.1.0"

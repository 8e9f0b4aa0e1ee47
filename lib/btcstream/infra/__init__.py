"""Local infrastructure: JVM artifacts from Maven Central, and a single-node Kafka and HDFS.

Not for: clusters. When settings point at an external Kafka or HDFS, nothing here starts it.
"""

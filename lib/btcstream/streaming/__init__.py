"""The Spark Structured Streaming job: Kafka ticks -> quarantine, enriched raw_data, hourly_metrics.

`parse` splits Kafka rows into valid ticks and quarantined records, `transforms` holds the pure
DataFrame functions (`enrich`, `hourly_metrics`), `job` wires sources and sinks into named
queries, `progress` persists their progress for `status`, `compact` merges small files.
"""

"""Connections to the data services: Kafka client options (security included) and the Spark session."""

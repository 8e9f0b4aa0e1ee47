"""Market data in: exchange clients (REST), the exchange clock, the tick record, the producer and its Kafka publisher."""

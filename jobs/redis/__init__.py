"""Redis infrastructure: connections that survive failover, write durability, the job record store, delivery of
queue messages, telemetry and RQ's registries."""

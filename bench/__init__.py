"""Failover benchmark harness: Patroni (and later pgquorum) on loopback, measured alike."""

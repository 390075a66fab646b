"""Chaos test bed: faults in network namespaces, a recorded client history and its checker (issue 5)."""

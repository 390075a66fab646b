"""pgquorum: PostgreSQL high availability with etcd leases, terms and self-fencing."""

__version__ = "0.1.0"

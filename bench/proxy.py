"""The userspace TCP proxies moved into the package (``pgquorum.chaos.tcpproxy``): the chaos harness
runs them inside network namespaces as delay proxies. Re-exported here for bench/system.py."""

from pgquorum.chaos.tcpproxy import Mode, ProxyHub

__all__ = ["Mode", "ProxyHub"]

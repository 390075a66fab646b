"""The Patroni member configuration, shared by the loopback benchmark (``bench/patroni.py``) and the
chaos test bed (``chaos/patroni_cluster.py``, which loads this file by path: ``bench`` is not part
of the installed package). Standard library only, pure: a dict that is then written as YAML/JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def patroni_config(
    name: str,
    *,
    scope: str,
    namespace: str,
    ttl: float,
    loop_wait: float,
    retry_timeout: float,
    api_listen: str,
    etcd_hosts: Sequence[str],
    pg_listen: str,
    data_dir: str,
    bin_dir: str,
    pgpass: str,
    superuser_password: str,
    replication_password: str,
    pg_hba: Sequence[str],
    use_proxies: bool = False,
    parameters: Mapping[str, Any] | None = None,
    local_parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One member's ``patroni.yml``: the etcd3 DCS, pg_rewind + slots, asynchronous replication
    (Patroni's default: no ``synchronous_mode``), no watchdog. ``parameters`` are added to the
    bootstrap DCS parameters (cluster-wide), ``local_parameters`` to this member's own."""
    return {
        "scope": scope,
        "namespace": namespace,
        "name": name,
        "log": {"level": "INFO"},
        "restapi": {"listen": api_listen, "connect_address": api_listen},
        "etcd3": {"hosts": list(etcd_hosts), "protocol": "http", "use_proxies": use_proxies},
        "bootstrap": {
            "dcs": {
                "ttl": ttl,
                "loop_wait": loop_wait,
                "retry_timeout": retry_timeout,
                "maximum_lag_on_failover": 1048576,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "wal_log_hints": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_keep_size": "256MB",
                        "max_connections": 100,
                        "shared_buffers": "64MB",
                        "checkpoint_timeout": "5min",
                        **(parameters or {}),
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
        },
        "postgresql": {
            "listen": pg_listen,
            "connect_address": pg_listen,
            "data_dir": data_dir,
            "bin_dir": bin_dir,
            "pgpass": pgpass,
            "use_unix_socket": False,
            "authentication": {
                "superuser": {"username": "postgres", "password": superuser_password},
                "replication": {"username": "replicator", "password": replication_password},
            },
            "parameters": dict(local_parameters or {}),
            "pg_hba": list(pg_hba),
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
        },
        "watchdog": {"mode": "off"},
    }

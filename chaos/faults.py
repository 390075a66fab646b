"""The fault catalogue: each fault is injected on a target chosen at that moment (the primary, a
replica, the etcd leader, ...) and returns the action that heals it; the runner holds it for
``hold(timing)`` seconds (or ``--hold``) in between.

Partitions are nftables drop rules inside the namespaces (chaos/netns.py); clients in the host
namespace keep reaching every node, so a deposed primary that still acknowledges writes is seen.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass

from pgquorum.agent.config import Timing
from pgquorum.chaos.cluster import API_PORT, ETCD_CLIENT_PORT, PG_PORT, ChaosCluster, ClusterError
from pgquorum.chaos.diskfull import Ballast, WalSwitcher, free_bytes
from pgquorum.chaos.slowlink import SlowLink

Heal = Callable[[], None]


@dataclass
class Target:
    """What a fault hit, for the report and for healing."""

    name: str  # member, etcd member, or "a+b"
    detail: str = ""


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    inject: Callable[[ChaosCluster, str, random.Random], tuple[Target, Heal]]  # (cluster, primary, rng)
    hold: Callable[[Timing], float]  # seconds between inject and heal
    smoke: bool = False  # part of the CI-sized smoke run


def _others(c: ChaosCluster, primary: str) -> list[str]:
    return [n for n in c.data if n != primary]


def _nothing() -> None:
    return None


# ----------------------------------------------------------------------------- processes


def kill_member(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    c.kill_member(p)
    return Target(p, "SIGKILL agent + postgres"), lambda: c.start_agent(p)


def kill_postgres(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    pid = c.kill_postgres(p)
    return Target(p, f"SIGKILL postmaster {pid} and its backends; the agent stays"), _nothing


def kill_agent(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    c.kill_agent(p)
    return Target(p, "SIGKILL the agent; postgres keeps running as primary"), lambda: c.start_agent(p)


def kill_replica(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    r = rng.choice(_others(c, p))
    c.kill_member(r)
    return Target(r, "SIGKILL a replica's agent + postgres"), lambda: c.start_agent(r)


def pause(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    pids = c.pause(p)
    return Target(p, f"SIGSTOP agent + postgres groups {pids}"), lambda: c.resume(pids)


# ----------------------------------------------------------------------------- partitions


def partition_primary_etcd(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    c.bed.block(p, c.etcd)
    return Target(p, "primary <-> every etcd member"), lambda: c.bed.heal(p)


def partition_primary_replicas(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    c.bed.block(p, _others(c, p) + c.witnesses)
    return Target(p, "primary <-> the other data members (etcd still reachable)"), lambda: c.bed.heal(p)


def isolate_primary(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    c.bed.isolate(p)
    return Target(p, "primary cut from every node (clients still reach it)"), lambda: c.bed.heal()


def isolate_replica(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    r = rng.choice(_others(c, p))
    c.bed.isolate(r)
    return Target(r, "a replica cut from every node"), lambda: c.bed.heal()


def majority_minority(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    """The primary with one etcd member (a minority) against the rest (a majority)."""
    e = rng.choice(c.etcd)
    c.bed.partition([[p, e]])
    return Target(p, f"minority {{{p}, {e}}} | majority of the rest"), lambda: c.bed.heal()


def one_way_out(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    peers = [n for n in c.bed.nodes if n != p]
    c.bed.block(p, peers, direction="out")
    return Target(p, "everything the primary sends to other nodes is lost"), lambda: c.bed.heal(p)


def one_way_in(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    peers = [n for n in c.bed.nodes if n != p]
    c.bed.block(p, peers, direction="in")
    return Target(p, "everything other nodes send to the primary is lost"), lambda: c.bed.heal(p)


# ----------------------------------------------------------------------------- etcd


def kill_etcd_leader(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    e = c.etcd_leader() or rng.choice(c.etcd)
    c.kill_etcd(e)
    return Target(e, "SIGKILL the etcd raft leader (2 of 3 remain)"), lambda: c.start_etcd(e)


def kill_etcd_quorum(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    leader = c.etcd_leader() or rng.choice(c.etcd)
    victims = [leader, rng.choice([e for e in c.etcd if e != leader])]
    for e in victims:
        c.kill_etcd(e)

    def heal() -> None:
        for e in victims:
            c.start_etcd(e)

    return Target("+".join(victims), "SIGKILL 2 of 3 etcd members: etcd has no quorum"), heal


def partition_etcd_leader(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    e = c.etcd_leader() or rng.choice(c.etcd)
    c.bed.isolate(e)
    return Target(e, "the etcd raft leader cut from every node"), lambda: c.bed.heal()


# ----------------------------------------------------------------------------- slow links, full disk

SLOW_REPLICATION_DELAY = 0.2  # s each way: a quorum commit waits ~0.4 s more


def slow_etcd_delay(t: Timing) -> float:
    """Each way: the round trip grows by the midpoint of (safety_margin, retry_timeout) -- more than
    the margin the leader keeps, yet every etcd call still answers within its budget (< ttl)."""
    return round((t.safety_margin + min(t.retry_timeout, t.ttl)) / 4, 3)


def _slow(c: ChaosCluster, node: str, peers: list[str], ports: list[int], delay: float) -> SlowLink:
    targets = [(c.addr(p), port) for p in peers for port in ports]
    link = SlowLink(c.bed, node, targets, delay, python=c.python, log_path=c.workdir / node / "slowlink.log")
    link.start()
    return link


def _stop_all(links: list[SlowLink]) -> Heal:
    def heal() -> None:
        for link in links:
            link.stop()

    return heal


def slow_replication(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    """Both ends: the primary's own connections to the replicas (promises, peer API) and the
    replicas' connections to the primary (WAL streaming, API)."""
    d, ports, links = SLOW_REPLICATION_DELAY, [PG_PORT, API_PORT], []
    try:
        links.append(_slow(c, p, _others(c, p), ports, d))
        links += [_slow(c, r, [p], ports, d) for r in _others(c, p)]
    except BaseException:
        _stop_all(links)()
        raise
    cut = sum(link.cut for link in links)
    detail = f"+{d * 1000:.0f} ms each way on every link primary <-> replicas ({cut} open connections cut)"
    return Target(p, detail), _stop_all(links)


def slow_etcd(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    d = slow_etcd_delay(c.spec.timing)
    link = _slow(c, p, c.etcd, [ETCD_CLIENT_PORT], d)
    detail = f"+{d * 1000:.0f} ms each way on the primary's links to etcd ({link.cut} open connections cut)"
    return Target(p, detail), link.stop


def disk_full(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    pgdata = c.workdir / p / "pgdata"
    if c.spec.data_volume_mb is None or not os.path.ismount(pgdata):
        # never fill the disk the work directory lives on
        raise ClusterError(f"disk-full: {pgdata} is not a volume of its own (ClusterSpec.data_volume_mb)")
    ballast = Ballast(pgdata)
    written = ballast.start()
    detail = f"PGDATA volume filled ({written >> 20} MiB ballast, {free_bytes(pgdata)} bytes left), kept full"
    return Target(p, detail), ballast.stop


def disk_full_wal(c: ChaosCluster, p: str, rng: random.Random) -> tuple[Target, Heal]:
    """disk-full, and the primary's WAL runs out of preallocated segments (pg_switch_wal)."""
    target, free = disk_full(c, p, rng)
    switcher = WalSwitcher(c.dsn(p))
    switcher.start()

    def heal() -> None:
        switcher.stop()
        free()
        target.detail += f"; {switcher.switches} WAL switches, then: {switcher.last_error or 'none failed'}"

    target.detail += "; WAL segments switched until none is left"
    return target, heal


def _ttl_plus(extra: float, factor: float = 1.0) -> Callable[[Timing], float]:
    return lambda t: round(t.ttl * factor + extra, 1)


CATALOGUE: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault("kill-member", "SIGKILL the primary's agent and postgres", kill_member, _ttl_plus(5), smoke=True),
        Fault("kill-postgres", "SIGKILL the primary's postgres only", kill_postgres, lambda t: 5.0, smoke=True),
        Fault("kill-agent", "SIGKILL the primary's agent only", kill_agent, _ttl_plus(5)),
        Fault("kill-replica", "SIGKILL a replica (agent + postgres)", kill_replica, lambda t: 5.0),
        Fault("pause-short", "SIGSTOP the primary for ttl/2", pause, lambda t: round(t.ttl / 2, 1)),
        Fault("pause-long", "SIGSTOP the primary for ttl + 5 s", pause, _ttl_plus(5), smoke=True),
        Fault("partition-primary-etcd", "primary <-> etcd", partition_primary_etcd, _ttl_plus(7, 2)),
        Fault("partition-primary-replicas", "primary <-> replicas", partition_primary_replicas, _ttl_plus(7, 2)),
        Fault("isolate-primary", "primary cut from every node", isolate_primary, _ttl_plus(7, 2), smoke=True),
        Fault("isolate-replica", "a replica cut from every node", isolate_replica, _ttl_plus(5)),
        Fault("majority-minority", "primary + 1 etcd | the rest", majority_minority, _ttl_plus(7, 2)),
        Fault("one-way-out", "the primary's outgoing packets are lost", one_way_out, _ttl_plus(7, 2)),
        Fault("one-way-in", "the primary's incoming packets are lost", one_way_in, _ttl_plus(7, 2)),
        Fault("kill-etcd-leader", "SIGKILL the etcd raft leader", kill_etcd_leader, _ttl_plus(5)),
        Fault("kill-etcd-quorum", "SIGKILL 2 of 3 etcd members", kill_etcd_quorum, _ttl_plus(7, 2), smoke=True),
        Fault("partition-etcd-leader", "the etcd leader cut from every node", partition_etcd_leader, _ttl_plus(5)),
        Fault("slow-replication", "primary <-> replicas +200 ms each way", slow_replication, _ttl_plus(7, 2)),
        Fault("slow-etcd", "primary <-> etcd slower than safety_margin", slow_etcd, _ttl_plus(7, 2)),
        Fault("disk-full", "the primary's PGDATA volume full", disk_full, _ttl_plus(12)),
        Fault("disk-full-wal", "PGDATA full and the WAL out of segments", disk_full_wal, _ttl_plus(12)),
    ]
}
SMOKE = [name for name, f in CATALOGUE.items() if f.smoke]


def select(spec: str) -> list[Fault]:
    """``all``, ``smoke`` or a comma-separated list of names (ValueError naming the unknown one)."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "all":
            names += list(CATALOGUE)
        elif part == "smoke":
            names += SMOKE
        elif part in CATALOGUE:
            names.append(part)
        else:
            raise ValueError(f"--scenario: unknown fault {part!r} (known: all, smoke, {', '.join(CATALOGUE)})")
    if not names:
        raise ValueError("--scenario: name at least one fault (or all / smoke)")
    return [CATALOGUE[n] for n in names]

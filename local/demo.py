"""``pgquorum local demo``: a failover you can watch.

Brings the local cluster up, writes a row every 10 ms, SIGKILLs the leader's agent and postgres,
prints the members' roles and term as they change, reports the write-unavailability window and
lost acknowledged writes, then starts the killed member again and watches it rejoin as a replica.
"""

from __future__ import annotations

import time

from pgquorum.local.runner import LocalCluster, LocalError
from pgquorum.local.workload import Writer


def _line(status: dict[str, object], t0: float) -> str:
    members = status["members"]
    assert isinstance(members, list)
    roles = "  ".join(f"{m['name']}={m['role']}" for m in members)
    return f"[{time.monotonic() - t0:6.2f}s] term={status['term']}  {roles}"


def run_demo(cluster: LocalCluster, members: int = 2, witnesses: int = 1) -> int:
    """The default, 2 data members + 1 witness, shows the cheap witness at work: its vote (with the
    surviving replica's) is the majority that promotes the replica."""
    print(f"starting the local cluster in {cluster.data_dir} ...", flush=True)
    state = cluster.up(members=members, witnesses=witnesses)
    status = cluster.status()
    leader = status["leader"]
    if not leader:
        raise LocalError("the cluster has no leader; see 'pgquorum local status'")
    writer = Writer(cluster.dsn(state))
    writer.prepare()
    writer.start()
    time.sleep(2)
    t0 = time.monotonic()
    print(f"\nwriting a row every 10 ms; killing leader {leader} (agent + postgres, SIGKILL) ...", flush=True)
    cluster.kill_member(str(leader), "node")
    last = ""
    new_leader = None
    while time.monotonic() - t0 < 60:
        status = cluster.status()
        line = _line(status, t0)
        if line.split("]", 1)[1] != last:
            print(line, flush=True)
            last = line.split("]", 1)[1]
        if status["leader"] not in (None, leader) and any(a.acked and a.acked > t0 for a in writer.acked()):
            new_leader = status["leader"]
            break
        time.sleep(0.2)
    time.sleep(1)
    writer.stop()
    if new_leader is None:
        print("no new leader within 60 s: see the agent logs", flush=True)
        return 1
    gap = writer.max_gap(after=t0)
    lost = writer.missing(cluster.dsn(state))
    print(f"\nnew leader: {new_leader} (term {status['term']})")
    print(f"write unavailability: {gap:.2f} s; acknowledged writes: {len(writer.acked())}; lost: {len(lost)}")
    print(f"\nstarting {leader} again: it rejoins as a replica (pg_rewind) ...", flush=True)
    cluster.start_member(str(leader))
    t1 = time.monotonic()
    while time.monotonic() - t1 < 120:
        status = cluster.status()
        mine = next(m for m in status["members"] if m["name"] == leader)
        if mine["role"] == "replica":
            print(_line(status, t0), flush=True)
            print(f"{leader} is streaming from {status['leader']} again.")
            print("\nthe cluster keeps running: 'pgquorum local status', 'pgquorum local down' to stop it.")
            return 0
        time.sleep(0.5)
    print(f"{leader} did not rejoin within 120 s: see {cluster.data_dir}/{leader}/agent.log")
    return 1

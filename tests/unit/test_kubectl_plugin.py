"""``kubectl pgquorum``: its decisions as pure functions on plain data (the status the operator writes,
the agent configuration it renders), and its command line up to the first kubectl call."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pgquorum.agent.model import ClusterState, LeaderInfo, MemberInfo, Role, SyncRecord
from pgquorum.ctl import kubectl as plugin
from pgquorum.ctl.client import CtlError, UsageError
from pgquorum.ctl.main import describe_member, failover_notes
from pgquorum.operator import crd, manifests
from pgquorum.operator.observed import MemberKind, Observed, PodView
from pgquorum.operator.spec import parse_spec
from pgquorum.operator.status import Desired, cluster_status

NOW = datetime(2026, 12, 4, 6, 30, 0, tzinfo=UTC)
SPEC = {"instances": 2, "witnesses": 1, "quorumVotes": True, "etcd": {"endpoints": ["http://etcd:2379"]}}


def operator_status(lag: int = 0, ready: tuple[str, ...] = ("db-0", "db-1", "db-w0")) -> dict[str, Any]:
    """The status the operator writes for 2 data members (db-0 leads) and a witness."""
    members = (
        MemberInfo("db-0", Role.LEADER, "running", "u", "c", timeline=1, wal_lsn=0x3000060, term=2),
        MemberInfo("db-1", Role.REPLICA, "running", "u", "c", timeline=1, received_lsn=0x3000060 - lag, term=2),
        MemberInfo("db-w0", Role.WITNESS, "running", "u", "", term=2, witness=True),
    )
    etcd = ClusterState(7, "sys", LeaderInfo("db-0", 3, 1), 2, members, sync=SyncRecord("db-0", 1, ("db-0", "db-1")))
    pods = tuple(
        PodView(n, kind, "Running", n in ready, role, f"node{i + 1}", "h", False)
        for i, (n, kind, role) in enumerate(
            [
                ("db-0", MemberKind.DATA, "primary"),
                ("db-1", MemberKind.DATA, "replica"),
                ("db-w0", MemberKind.WITNESS, "witness"),
            ]
        )
    )
    desired = Desired(members=("db-0", "db-1"), witnesses=("db-w0",), quorum_mode=True, generation=1)
    return cluster_status(Observed(pods=pods, etcd=etcd), desired, None, NOW)


def resource(status: dict[str, Any] | None = None, instances: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": "db"}, "spec": {**SPEC, "instances": instances}, "status": status or {}}


# -- names the operator gives ---------------------------------------------------------------------


def test_the_plugin_uses_the_names_the_operator_gives() -> None:
    assert plugin.RESOURCE == crd.NAME
    spec = parse_spec(SPEC, "db")
    ident = manifests.Identity("ns", "db", "uid", ("http://etcd:2379",))
    assert plugin.config_map("db") == ident.config
    pod = manifests.member_pod(spec, ident, "db-0", MemberKind.DATA).body
    assert [c["name"] for c in pod["spec"]["containers"]] == [plugin.CONTAINER]
    assert plugin.data_members(resource()) == [ident.member(0), ident.member(1)]


def test_pgquorumctl_in_a_pod_gets_the_api_and_token_of_the_agent_config_the_operator_renders() -> None:
    spec = parse_spec(SPEC, "db")
    ident = manifests.Identity("ns", "db", "uid", ("http://etcd:2379",))
    for pod, witness in (("db-0", False), ("db-w0", True)):
        config = manifests.agent_config(spec, ident, pod, witness)
        token = f"{manifests.SECRETS_MOUNT}/api-token"
        assert plugin.ctl_args(config, pod) == [
            "--api",
            f"http://127.0.0.1:{manifests.API_PORT}",
            "--token-file",
            token,
        ]


def test_ctl_args_other_shapes() -> None:
    basic = {"api_listen": "10.0.0.5:8010", "api": {"username": "ops", "password_file": "/s/pw"}}
    assert plugin.ctl_args(basic, "p") == ["--api", "http://10.0.0.5:8010", "--user", "ops", "--password-file", "/s/pw"]
    assert plugin.ctl_args({"api_listen": ":8008"}, "p") == ["--api", "http://127.0.0.1:8008"]
    with pytest.raises(CtlError, match="p: its agent configuration has no api_listen"):
        plugin.ctl_args({}, "p")


# -- --at and the patch ---------------------------------------------------------------------------


def test_at_is_rfc3339_with_seconds_and_an_offset_sent_as_utc() -> None:
    assert plugin.parse_at("2026-12-04T07:00:00Z", NOW) == "2026-12-04T07:00:00Z"
    assert plugin.parse_at("2026-12-04T09:00:00+02:00", NOW) == "2026-12-04T07:00:00Z"
    assert plugin.parse_at("2026-12-04t07:00:00.000z", NOW) == "2026-12-04T07:00:00Z"
    assert plugin.parse_at("2026-12-04T06:29:30Z", NOW) == "2026-12-04T06:29:30Z"  # clock skew is fine
    assert plugin.rfc3339(NOW + timedelta(microseconds=7)) == "2026-12-04T06:30:00Z"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2026-12-04T07:00:00", "with seconds and an offset"),
        ("2026-12-04T07:00Z", "with seconds and an offset"),
        ("tomorrow", "with seconds and an offset"),
        ("2026-13-04T07:00:00Z", "not a valid date or time"),
        ("2026-12-04T07:00:00.5Z", "whole seconds only"),
        ("2026-12-04T06:00:00Z", "in the past (now is 2026-12-04T06:30:00Z); leave out --at"),
    ],
)
def test_a_bad_at_is_a_usage_error_naming_it(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=r"^--at ") as exc:
        plugin.parse_at(text, NOW)
    assert why in str(exc.value) and exc.value.exit_code == 2


def test_the_patch_names_target_and_time() -> None:
    assert plugin.switchover_patch("db-1", "2026-12-04T06:30:00Z") == {
        "spec": {"switchover": {"target": "db-1", "at": "2026-12-04T06:30:00Z"}}
    }


# -- choosing members -----------------------------------------------------------------------------


def test_the_default_target_is_the_ready_replica_with_the_least_lag() -> None:
    assert plugin.best_replica(operator_status(lag=10)) == "db-1"
    st = {
        "leader": "db-0",
        "members": [
            {"name": "db-0", "role": "leader", "ready": True},
            {"name": "db-1", "role": "replica", "ready": True, "lagBytes": 500},
            {"name": "db-2", "role": "replica", "ready": True, "lagBytes": 20},
            {"name": "db-3", "role": "replica", "ready": False, "lagBytes": 0},
            {"name": "db-4", "role": "replica", "ready": True},  # lag unknown: last
            {"name": "db-5", "role": "replica", "ready": True, "lagBytes": 20},
            {"name": "db-w0", "role": "witness", "ready": True},
        ],
    }
    assert plugin.best_replica(st) == "db-2"


def test_without_a_ready_replica_there_is_no_default_target() -> None:
    with pytest.raises(CtlError, match=r"no ready replica .*db-1 replica \(not ready\).*pass --to MEMBER"):
        plugin.best_replica(operator_status(ready=("db-0", "db-w0")))
    with pytest.raises(CtlError, match="members: none"):
        plugin.best_replica({})


def test_to_must_be_a_data_member_of_the_spec() -> None:
    assert plugin.check_data_member(resource(), "db-1") == "db-1"
    for name in ("db-w0", "db-2", "other-0"):
        with pytest.raises(UsageError, match=f"^--to {name}: not a data member of db; use one of db-0, db-1$"):
            plugin.check_data_member(resource(), name)


def test_history_runs_in_the_leaders_pod_else_a_ready_data_member_else_a_witness() -> None:
    assert plugin.exec_pod(operator_status()) == "db-0"
    assert plugin.exec_pod(operator_status(ready=("db-1", "db-w0"))) == "db-1"
    assert plugin.exec_pod(operator_status(ready=("db-w0",))) == "db-w0"
    with pytest.raises(CtlError, match="no ready pod"):
        plugin.exec_pod(operator_status(ready=()))


def test_a_failover_runs_in_the_candidates_pod() -> None:
    assert plugin.member_pod(operator_status(ready=()), "db-1") == "db-1"
    with pytest.raises(CtlError, match="db-2: has no pod right now"):
        plugin.member_pod(operator_status(), "db-2")


def test_the_confirmation_uses_ctls_wording_on_the_status() -> None:
    view = plugin.cluster_view(operator_status(lag=2048))
    assert describe_member(view, "db-1") == "db-1 (replica, lag 2 KiB)"
    notes = failover_notes(view, "db-1")
    assert notes[0].startswith("db-0 is the leader (ready): if it is healthy, 'switchover'")
    assert notes[1] == "db-1 lags 2 KiB behind: those writes may be lost."


# -- following status.switchover ------------------------------------------------------------------


def test_the_outcome_is_read_only_from_this_requests_record() -> None:
    at = "2026-12-04T06:30:00Z"
    st: dict[str, Any] = {"leader": "db-1", "term": 3}
    assert plugin.switchover_outcome(st, "db-1", at) is None  # the operator has not seen it yet
    st["switchover"] = {"target": "db-1", "at": "2026-12-04T06:00:00Z", "state": "Done", "message": "old"}
    assert plugin.switchover_outcome(st, "db-1", at) is None  # an earlier request's record
    st["switchover"] = {"target": "db-1", "at": at, "state": "Pending", "message": "asked db-0 to hand over"}
    assert plugin.switchover_outcome(st, "db-1", at) is None
    st["switchover"] = {"target": "db-1", "at": at, "state": "Done", "message": "db-1 leads (term 3)"}
    assert plugin.switchover_outcome(st, "db-1", at) == ("Done", "switchover to db-1 done, leader db-1 term 3")
    st["switchover"] = {"target": "db-1", "at": at, "state": "Refused", "message": "db-1 is tagged nofailover"}
    assert plugin.switchover_outcome(st, "db-1", at) == (
        "Refused",
        "switchover to db-1 refused: db-1 is tagged nofailover",
    )


# -- output and errors ----------------------------------------------------------------------------


def test_status_text_header_and_members() -> None:
    text = plugin.status_text("db", "ns", operator_status(lag=1536))
    lines = text.splitlines()
    assert lines[0] == "cluster db (namespace ns): Healthy, leader db-0, term 2, timeline -"
    assert lines[1] == "quorum: provable: every commit waits for 1 of db-0, db-1"
    assert "Degraded=False: AllMembersReady (3 members ready)" in lines
    assert not any(line.startswith(("Ready=", "Available=", "QuorumSafe=")) for line in lines)  # True: not shown
    table = lines[lines.index(next(x for x in lines if x.startswith("MEMBER"))) :]
    assert table[0].split() == ["MEMBER", "ROLE", "POD", "NODE", "LSN", "LAG", "READY"]
    assert table[1].split() == ["db-0", "leader", "db-0", "node1", "0/3000060", "yes"]
    assert table[2].split() == ["db-1", "replica", "db-1", "node2", "0/2FFFA60", "1.5", "KiB", "yes"]
    assert table[3].split() == ["db-w0", "witness", "db-w0", "node3", "-", "-", "yes"]


def test_status_text_without_a_status_and_with_a_switchover() -> None:
    assert "no status yet" in plugin.status_text("db", "ns", {})
    st = {**operator_status(), "switchover": {"target": "db-1", "at": "T", "state": "Pending", "message": "waiting"}}
    assert "switchover to db-1 (at T): Pending: waiting" in plugin.status_text("db", "ns", st)


def test_kubectl_error_is_its_error_line() -> None:
    err = 'Error from server (NotFound): pods "db-9" not found\n'
    assert plugin.kubectl_error(err) == 'Error from server (NotFound): pods "db-9" not found'
    err = "WARNING: data may be lost\npgquorumctl: refused by the cluster: no\ncommand terminated with exit code 1\n"
    assert plugin.kubectl_error(err) == "pgquorumctl: refused by the cluster: no"
    assert plugin.kubectl_error("") == "failed (no message)"


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_kubectl_is_kubectl_env_or_on_path(tmp_path: Path) -> None:
    k = executable(tmp_path / "kubectl")
    assert plugin.find_kubectl({"PATH": str(tmp_path)}) == str(k)
    other = executable(tmp_path / "k134")
    assert plugin.find_kubectl({"KUBECTL": str(other), "PATH": ""}) == str(other)
    with pytest.raises(UsageError, match=r"^kubectl: not found on PATH; install kubectl or set \$KUBECTL="):
        plugin.find_kubectl({"PATH": str(tmp_path / "none")})
    with pytest.raises(UsageError, match=r"^\$KUBECTL '/no/kubectl': not an executable"):
        plugin.find_kubectl({"KUBECTL": "/no/kubectl"})


# -- the command line (up to the first kubectl call) ----------------------------------------------


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = plugin.main(list(argv))
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_wrong_command_lines_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECTL", str(executable(tmp_path / "kubectl")))  # answers nothing, succeeds
    for argv, says in (
        ([], "the following arguments are required: COMMAND"),
        (["status"], "the following arguments are required: CLUSTER"),
        (["failover", "db"], "the following arguments are required: --to"),
        (["switchover", "db", "--timeout", "0"], "must be > 0"),
        (["-n", "ns", "switchover", "db", "--at", "yesterday"], "--at 'yesterday': expected an RFC 3339 time"),
    ):
        rc, out, err = run_main(capsys, *argv)
        assert rc == 2 and out == "", (argv, out)
        assert len(err.strip().splitlines()) == 1 and says in err, (argv, err)
    monkeypatch.delenv("KUBECTL")
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    rc, _, err = run_main(capsys, "status", "db")
    assert rc == 2 and err.strip() == (
        "kubectl pgquorum: kubectl: not found on PATH; install kubectl or set $KUBECTL=/path/to/kubectl"
    )


def test_a_failover_without_force_or_terminal_asks_for_force(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECTL", str(executable(tmp_path / "kubectl")))
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115 - not a terminal
    rc, _, err = run_main(capsys, "-n", "ns", "failover", "db", "--to", "db-1")
    assert rc == 2 and "stdin is not a terminal, so there is no one to confirm: pass --force" in err

"""STONITH hook configuration: the example of the docs parses; every bad field is named with its path and a fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pgquorum.agent.config import ConfigError
from pgquorum.agent.stonith import (
    ExecHook,
    KubernetesHook,
    LocalKillHook,
    Policy,
    WebhookHook,
    parse_hooks,
    preflight,
    worst_case_seconds,
)

EXAMPLE = """
stonith:
  - type: exec
    command: [/usr/local/bin/fence, --x]
    timeout: 5
    policy: required
  - type: webhook
    url: https://fencer.example:8443/fence
    token_file: /etc/pgquorum/fence-token
    hmac_key_file: /etc/pgquorum/fence-key
    timeout: 3
    policy: best-effort
  - type: local-kill
    pid_file: /var/lib/pgquorum/{old_leader}/pgdata/postmaster.pid
  - type: kubernetes
    namespace: db
    pod: "{old_leader}"
    taint_node: false
    policy: required
"""


def test_the_documented_example_parses_into_immutable_hooks() -> None:
    hooks = parse_hooks(yaml.safe_load(EXAMPLE)["stonith"])
    exec_hook, webhook, kill, kube = hooks
    assert isinstance(exec_hook, ExecHook)
    assert exec_hook.command == ("/usr/local/bin/fence", "--x")
    assert (exec_hook.name, exec_hook.timeout, exec_hook.policy, exec_hook.append_args) == (
        "exec",
        5.0,
        Policy.REQUIRED,
        True,
    )
    assert isinstance(webhook, WebhookHook)
    assert webhook.token_file == Path("/etc/pgquorum/fence-token")
    assert webhook.policy is Policy.BEST_EFFORT and webhook.timeout == 3.0
    assert isinstance(kill, LocalKillHook)
    assert kill.policy is Policy.REQUIRED  # the safe default
    assert kill.timeout == 5.0
    assert isinstance(kube, KubernetesHook)
    assert (kube.namespace, kube.pod, kube.taint_node, kube.api_url) == ("db", "{old_leader}", False, None)
    with pytest.raises(AttributeError):
        exec_hook.timeout = 1  # type: ignore[misc]
    assert worst_case_seconds(hooks) == pytest.approx(5 + 3 + 5 + 10 + 4)


def test_nothing_configured_means_no_hooks() -> None:
    assert parse_hooks(None) == ()
    assert parse_hooks([]) == ()


def test_names_default_to_the_type_and_are_numbered_when_a_type_repeats() -> None:
    hooks = parse_hooks(
        [
            {"type": "exec", "command": ["/bin/true"]},
            {"type": "webhook", "url": "http://127.0.0.1:1/"},
            {"type": "exec", "command": ["/bin/true"], "name": "ipmi-off"},
            {"type": "exec", "command": ["/bin/true"]},
        ]
    )
    assert [h.name for h in hooks] == ["exec-1", "webhook", "ipmi-off", "exec-3"]


def test_a_command_string_is_split_without_a_shell_and_placeholders_switch_off_trailing_args() -> None:
    (hook,) = parse_hooks([{"type": "exec", "command": "/usr/bin/fence --node '{old_leader}' --term={term}"}])
    assert isinstance(hook, ExecHook)
    assert hook.command == ("/usr/bin/fence", "--node", "{old_leader}", "--term={term}")
    assert hook.append_args is False
    (hook,) = parse_hooks([{"type": "exec", "command": ["/x", "{old_leader}"], "append_args": True}])
    assert isinstance(hook, ExecHook) and hook.append_args is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"stonith": {"type": "exec"}}, "stonith: expected a list of hooks, got a mapping"),
        ([42], "stonith[0]: expected a mapping with a type"),
        ([{"command": ["/x"]}], "stonith[0].type: must be one of exec, webhook, local-kill, kubernetes, got null"),
        ([{"type": "ssh"}], 'stonith[0].type: must be one of exec, webhook, local-kill, kubernetes, got "ssh"'),
        ([{"type": ["exec"]}], 'stonith[0].type: must be one of exec, webhook, local-kill, kubernetes, got ["exec"]'),
        (
            [{"type": "exec", "command": ["/x"]}, {"type": "webhook", "url": "http://h/", "timeout": "x"}],
            'stonith[1].timeout: must be a positive number of seconds, got "x"; e.g. timeout: 5',
        ),
        ([{"type": "exec", "command": ["/x"], "timeout": 0}], "stonith[0].timeout: must be a positive number"),
        ([{"type": "exec", "command": ["/x"], "timeout": True}], "stonith[0].timeout: must be a positive number"),
        ([{"type": "exec", "command": ["/x"], "timeout": 1e9}], "stonith[0].timeout: at most 600 seconds"),
        (
            [{"type": "exec", "command": ["/x"], "policy": "maybe"}],
            'stonith[0].policy: must be required or best-effort, got "maybe"',
        ),
        ([{"type": "exec"}], "stonith[0].command: required setting is missing; e.g. command: ["),
        ([{"type": "exec", "command": []}], "stonith[0].command: must name an executable"),
        ([{"type": "exec", "command": ["/x", 3]}], "stonith[0].command[1]: must be a non-empty string, got 3"),
        ([{"type": "exec", "command": ["/x", "{victim}"]}], "stonith[0].command[1]: unknown placeholder {victim}"),
        ([{"type": "exec", "command": ["/x", "{old_leader"]}], "stonith[0].command[1]: bad placeholder syntax"),
        ([{"type": "exec", "command": ["/x"], "cmd": "y"}], "stonith[0].cmd: unknown setting for a exec hook"),
        ([{"type": "exec", "command": ["/x"], "env": {"PGQUORUM_TERM": "1"}}], "stonith[0].env.PGQUORUM_TERM"),
        ([{"type": "exec", "command": ["/x"], "env": {"1BAD": "1"}}], 'stonith[0].env: "1BAD" is not a valid'),
        ([{"type": "exec", "command": ["/x"], "append_args": "yes"}], "stonith[0].append_args: must be true or false"),
        ([{"type": "webhook"}], "stonith[0].url: required setting is missing"),
        ([{"type": "webhook", "url": "ftp://h/x"}], "stonith[0].url: must be an http:// or https:// URL"),
        ([{"type": "webhook", "url": "https://u:p@h/x"}], "stonith[0].url: do not put credentials in the URL"),
        (
            [{"type": "webhook", "url": "https://h/", "token_file": "token"}],
            "stonith[0].token_file: must be an absolute path",
        ),
        ([{"type": "local-kill"}], "stonith[0]: set exactly one of pid_file"),
        ([{"type": "local-kill", "pid_file": "/a", "data_dir": "/b"}], "stonith[0]: set exactly one of pid_file"),
        ([{"type": "local-kill", "pid_file": "/run/{who}.pid"}], "stonith[0].pid_file: unknown placeholder {who}"),
        ([{"type": "kubernetes", "namespace": "Bad_NS"}], 'stonith[0].namespace: "Bad_NS" is not a Kubernetes'),
        ([{"type": "kubernetes", "api_url": "http://127.0.0.1:1"}], "stonith[0].namespace: required with api_url"),
        ([{"type": "kubernetes", "taint_node": "no"}], "stonith[0].taint_node: must be true or false"),
        (
            [{"type": "kubernetes", "taint_wait": "3m"}],
            'stonith[0].taint_wait: must be a positive number of seconds, got "3m"; e.g. taint_wait: 180',
        ),
        ([{"type": "kubernetes", "taint_wait": 7200}], "stonith[0].taint_wait: at most 3600 seconds"),
        ([{"type": "kubernetes", "taint_poll": 0}], "stonith[0].taint_poll: must be a positive number of seconds"),
        (
            [{"type": "exec", "command": ["/x"], "name": "a"}, {"type": "exec", "command": ["/y"], "name": "a"}],
            'stonith[1].name: "a" is already used by stonith[0]',
        ),
        ([{"type": "exec", "command": ["/x"], "name": "no spaces"}], 'stonith[0].name: "no spaces" must be'),
    ],
)
def test_errors_name_the_exact_field(raw: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_hooks(raw)
    assert str(err.value).startswith(expected), str(err.value)


def test_the_field_path_prefix_follows_the_caller() -> None:
    with pytest.raises(ConfigError, match=r"^ha\.stonith\[0\]\.timeout: "):
        parse_hooks([{"type": "exec", "command": ["/x"], "timeout": -1}], where="ha.stonith")


def test_hooks_never_hold_secrets_only_paths(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0p-s3cret-value\n")
    (hook,) = parse_hooks([{"type": "webhook", "url": "http://127.0.0.1:9/", "token_file": str(token)}])
    assert "t0p-s3cret-value" not in repr(hook)


def test_preflight_names_missing_files_and_executables(tmp_path: Path) -> None:
    script = tmp_path / "fence"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    hooks = parse_hooks(
        [
            {"type": "exec", "command": [str(script)]},
            {"type": "exec", "command": [str(tmp_path / "missing")]},
            {"type": "webhook", "url": "http://127.0.0.1:9/", "token_file": str(tmp_path / "no-token")},
            {"type": "local-kill", "data_dir": str(tmp_path)},
            {"type": "kubernetes"},
        ]
    )
    problems = preflight(hooks, environ={})
    assert problems[0].startswith("stonith[1].command[0]: ")
    assert problems[1].startswith("stonith[2].token_file: ")
    assert problems[2].startswith("stonith[3].data_dir: ")
    assert problems[3].startswith("stonith[4]: not running in a Kubernetes pod")
    assert not any(p.startswith("stonith[0]") for p in problems)

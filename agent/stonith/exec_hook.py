"""The ``exec`` hook: run an executable; exit status 0 means the old leader is fenced.

The executable runs in a session (and process group) of its own, with no shell. On timeout the
whole group is SIGKILLed, so helpers it forked die with it (a helper that calls setsid() itself
escapes; do not do that in a fence script). Output goes to an unnamed temporary file, not a pipe:
a background helper that keeps stdout open cannot make the agent wait past the timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from typing import IO

from pgquorum.agent.postgres.process import kill_group
from pgquorum.agent.stonith.config import ExecHook
from pgquorum.agent.stonith.model import FenceRequest, HookFailure, Outcome, render

OUTPUT_LIMIT = 400  # characters of output kept in the result message


def _tail(out: IO[bytes]) -> str:
    """The last lines of the hook's output, on one line (a chatty hook must not fill the log)."""
    size = out.seek(0, os.SEEK_END)
    out.seek(max(0, size - 8192))
    raw = out.read()
    text = " | ".join(line.strip() for line in raw.decode(errors="replace").splitlines() if line.strip())
    return text[-OUTPUT_LIMIT:]


def argv_for(hook: ExecHook, request: FenceRequest) -> list[str]:
    argv = [render(arg, request, f"{hook.where}.command[{i}]") for i, arg in enumerate(hook.command)]
    if hook.append_args:
        argv += [request.old_leader, request.new_leader, str(request.term), request.cluster]
    return argv


def env_for(hook: ExecHook, request: FenceRequest) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in hook.env:
        env[key] = render(value, request, f"{hook.where}.env.{key}")
    # Set last: a stale PGQUORUM_* inherited from the agent's environment must not reach the hook.
    for key in [k for k in env if k.startswith("PGQUORUM_")]:
        del env[key]
    env.update(request.env())
    return env


def run_exec(hook: ExecHook, request: FenceRequest) -> str:
    argv = argv_for(hook, request)
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env_for(hook, request),
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise HookFailure(
                Outcome.FAILED, f"cannot run {argv[0]} ({exc.strerror or exc}); check {hook.where}.command[0]"
            ) from None
        try:
            code = proc.wait(timeout=hook.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)  # reap; SIGKILL ends it unless it is stuck in the kernel
            raise HookFailure(
                Outcome.TIMEOUT,
                f"{argv[0]} did not exit within {hook.timeout:g}s; its process group {proc.pid} was killed; "
                f"output: {_tail(out)}",
            ) from None
        output = _tail(out)
    if code == 0:
        return f"{argv[0]} exited 0" + (f"; output: {output}" if output else "")
    if code < 0:
        try:
            what = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            what = f"was killed by signal {-code}"
    else:
        what = f"exited with status {code}"
    raise HookFailure(Outcome.FAILED, f"{argv[0]} {what}" + (f"; output: {output}" if output else ""))

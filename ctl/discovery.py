"""Which member APIs to talk to, and with which credentials.

Exactly one way to find the cluster:

* ``--api URL[,URL...]``: any members' API URLs (each is tried in turn);
* ``--etcd URL[,URL...] --cluster NAME [--prefix P]``: read the members' ``api_url`` from etcd (one
  range read; nothing is ever written: the DCS object's member name is a throwaway);
* ``--local [--data-dir DIR]``: the local cluster's member APIs from its ``cluster.json``;
* otherwise ``$PGQUORUM_API`` (comma-separated URLs).

Credentials, first match wins: ``--token-file``, ``--user``/``--password-file``,
``$PGQUORUM_TOKEN_FILE``, and with ``--local`` the cluster's ``secrets/api-token`` when it exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pgquorum.ctl.client import Auth, CtlError, UsageError, normalize_url

ENV_API = "PGQUORUM_API"
ENV_TOKEN_FILE = "PGQUORUM_TOKEN_FILE"
LOCAL_TOKEN = Path("secrets") / "api-token"


@dataclass(frozen=True)
class Target:
    urls: tuple[str, ...]
    how: str  # how the URLs were found, for messages
    cluster_name: str | None = None
    local_token: Path | None = None  # the local cluster's API token file (may not exist)


def split_urls(text: str, option: str) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise UsageError(f"{option}: expected URL[,URL...]")
    for url in urls:
        try:
            normalize_url(url)
        except UsageError:
            raise UsageError(f"{option} {url!r}: expected http(s)://host:port") from None
    return urls


def resolve_target(
    api: str | None,
    etcd: str | None,
    cluster: str | None,
    prefix: str | None,
    local: bool,
    data_dir: Path | None,
    env: Mapping[str, str],
    timeout: float,
) -> Target:
    chosen = [
        flag for flag, given in (("--api", api is not None), ("--etcd", etcd is not None), ("--local", local)) if given
    ]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)}: choose one way to find the cluster")
    if cluster is not None and etcd is None:
        raise UsageError("--cluster is only used with --etcd")
    if prefix is not None and etcd is None:
        raise UsageError("--prefix is only used with --etcd")
    if data_dir is not None and not local:
        raise UsageError("--data-dir is only used with --local")
    if api is not None:
        return Target(tuple(split_urls(api, "--api")), "--api")
    if etcd is not None:
        if not cluster:
            raise UsageError("--etcd needs --cluster NAME (the agents' 'cluster' setting)")
        endpoints = split_urls(etcd, "--etcd")
        urls = discover_from_etcd(endpoints, prefix if prefix is not None else "pgquorum", cluster, timeout)
        return Target(tuple(urls), f"etcd {','.join(endpoints)}", cluster_name=cluster)
    if local:
        from pgquorum.local.runner import LocalCluster, LocalError

        lc = LocalCluster(data_dir)
        try:
            state = lc.load()
        except LocalError as exc:
            raise CtlError(f"--local: {exc}") from None
        if not state.members:
            raise CtlError(f"--local: the cluster in {lc.data_dir} has no members")
        return Target(
            tuple(m.api_url for m in state.members),
            f"local cluster {lc.data_dir}",
            cluster_name=state.cluster,
            local_token=lc.data_dir / LOCAL_TOKEN,
        )
    from_env = env.get(ENV_API, "").strip()
    if from_env:
        return Target(tuple(split_urls(from_env, f"${ENV_API}")), f"${ENV_API}")
    raise UsageError(
        f"which cluster? pass --api URL[,URL...], --etcd URL --cluster NAME, or --local (or set ${ENV_API})"
    )


def discover_from_etcd(endpoints: list[str], prefix: str, cluster: str, timeout: float) -> list[str]:
    """The members' API URLs registered in etcd, leader first. Reads only."""
    from pgquorum.agent.dcs.base import DCSError
    from pgquorum.agent.dcs.etcd import EtcdDCS

    base = f"/{prefix.strip('/')}/{cluster}/" if prefix.strip("/") else f"/{cluster}/"
    try:
        dcs = EtcdDCS(endpoints, prefix, cluster, member=f"pgquorumctl-{os.getpid()}", ttl=10, timeout=timeout)
    except DCSError as exc:
        raise UsageError(f"--etcd: {exc}") from None
    try:
        state = dcs.get_cluster()
    except DCSError as exc:
        raise CtlError(f"--etcd: {exc}") from None
    finally:
        dcs.close()
    members = sorted(state.members, key=lambda m: (state.leader is None or m.name != state.leader.name, m.name))
    urls = [m.api_url for m in members if m.api_url]
    if not urls:
        raise CtlError(
            f"--etcd {','.join(endpoints)}: no member of cluster {cluster!r} is registered under {base} "
            "(wrong --cluster or --prefix, or every agent is down)"
        )
    return urls


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise CtlError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if not text:
        raise CtlError(f"{what} {path}: the file is empty")
    return text.splitlines()[0].strip()


def load_auth(
    token_file: Path | None,
    user: str | None,
    password_file: Path | None,
    env: Mapping[str, str],
    local_token: Path | None = None,
) -> Auth:
    if token_file is not None and (user is not None or password_file is not None):
        raise UsageError("--token-file and --user/--password-file: choose one way to authenticate")
    if user is not None and password_file is None:
        raise UsageError("--user needs --password-file PATH")
    if password_file is not None and user is None:
        raise UsageError("--password-file needs --user NAME")
    if token_file is not None:
        return Auth(token=_read_secret(token_file, "--token-file"), source=f"--token-file {token_file}")
    if user is not None and password_file is not None:
        password = _read_secret(password_file, "--password-file")
        return Auth(user=user, password=password, source=f"--user {user} --password-file {password_file}")
    env_file = env.get(ENV_TOKEN_FILE, "").strip()
    if env_file:
        path = Path(env_file)
        return Auth(token=_read_secret(path, f"${ENV_TOKEN_FILE}"), source=f"${ENV_TOKEN_FILE} {path}")
    if local_token is not None and local_token.is_file():
        try:
            return Auth(token=_read_secret(local_token, "local API token"), source=f"{local_token}")
        except CtlError:
            return Auth()  # unreadable for this user: read-only commands still work
    return Auth()

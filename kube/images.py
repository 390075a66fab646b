"""Container images for the local Kubernetes cluster, built with podman and loaded into containerd.

No Docker engine and no registry here: a Debian base is made with debootstrap from the host's own
mirror and imported as ``docker.io/library/debian:12-slim``; every image is built with podman, saved
as a docker-archive under ``<cache>/kube/images/`` named by its content key (a warm machine never
rebuilds), and imported into each node's containerd with ``ctr -n k8s.io images import``.

``python3 -m pgquorum.kube.images build [--only NAME]`` builds and prints reference, size, time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.utils
import hashlib
import importlib.metadata
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgquorum.cache import BuildError, cache_dir, go_build, locked, write_module
from pgquorum.kube.versions import COREDNS, LOCAL_PATH_PROVISIONER, Component

Progress = Callable[[str], None]

SUITE = "bookworm"
BASE_REFERENCE = "docker.io/library/debian:12-slim"
BASE_LABEL = "org.pgquorum.base-key"
KEY_LABEL = "org.pgquorum.content-key"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ETCD_VERSION = "3.4.23"
PAUSE_VERSION = "3.10"
BUSYBOX_VERSION = "1.35.0"  # Debian 12's busybox-static 1:1.35.0-4+deb12u1
PROMETHEUS_VERSION = "2.42.0"  # Debian 12's prometheus 2.42.0+ds-5+deb12u1


def _pyproject(root: Path) -> dict[str, object]:
    with open(root / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    assert isinstance(project, dict)
    return project


def _default_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    for cand in (Path(os.environ.get("PGQUORUM_SOURCE", here)), here, Path.cwd()):
        if (cand / "Dockerfile").is_file() and (cand / "images").is_dir() and (cand / "pyproject.toml").is_file():
            return cand
    return here


def source_root() -> Path:
    """The checkout the images are built from: ``$PGQUORUM_SOURCE``, this file's checkout, or the cwd."""
    root = _default_root()
    if not (root / "Dockerfile").is_file():
        raise BuildError("images: the build needs the source checkout: run from it or set PGQUORUM_SOURCE=/path/to/it")
    return root


def _version_from(root: Path) -> str:
    """The checkout's version; outside a checkout (an installed wheel, the image itself) the
    installed package's, so the image reference matches what was built from that version."""
    try:
        return str(_pyproject(root)["version"])
    except (OSError, KeyError):
        pass
    try:
        return importlib.metadata.version("pgquorum")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


PGQUORUM_VERSION = _version_from(_default_root())
PGQUORUM_IMAGE = f"localhost/pgquorum:{PGQUORUM_VERSION}"
ETCD_IMAGE = f"localhost/pgquorum-etcd:{ETCD_VERSION}"
PAUSE_IMAGE = f"localhost/pgquorum-kube/pause:{PAUSE_VERSION}"
COREDNS_IMAGE = f"localhost/pgquorum-kube/coredns:{COREDNS.version}"
LOCAL_PATH_PROVISIONER_IMAGE = f"localhost/pgquorum-kube/local-path-provisioner:{LOCAL_PATH_PROVISIONER.version}"
BUSYBOX_IMAGE = f"localhost/pgquorum-kube/busybox:{BUSYBOX_VERSION}"
PROMETHEUS_IMAGE = f"localhost/pgquorum-prometheus:{PROMETHEUS_VERSION}"


@dataclass(frozen=True)
class Image:
    """One image: ``context`` and ``containerfile`` relative to the checkout; ``needs`` are the things
    built first ("base" = the debootstrap base, else a binary name staged into the context)."""

    name: str
    reference: str
    context: str
    containerfile: str
    version: str
    needs: tuple[str, ...] = ()
    build_args: tuple[tuple[str, str], ...] = ()
    secret: bool = False  # the host's CA bundle as build secret "cacert" (pip behind TLS interception)


IMAGES: tuple[Image, ...] = (
    Image(
        "pgquorum",
        PGQUORUM_IMAGE,
        ".",
        "Dockerfile",
        PGQUORUM_VERSION,
        needs=("base",),
        build_args=(("PGQUORUM_VERSION", PGQUORUM_VERSION),),
        secret=True,
    ),
    Image(
        "etcd",
        ETCD_IMAGE,
        "images/etcd",
        "images/etcd/Containerfile",
        ETCD_VERSION,
        ("base",),
        (("ETCD_VERSION", ETCD_VERSION),),
    ),
    Image("pause", PAUSE_IMAGE, "images/pause", "images/pause/Containerfile", PAUSE_VERSION, ("pause",)),
    Image(
        "coredns",
        COREDNS_IMAGE,
        "images/coredns",
        "images/coredns/Containerfile",
        COREDNS.version,
        ("base", "coredns"),
    ),
    Image(
        "local-path-provisioner",
        LOCAL_PATH_PROVISIONER_IMAGE,
        "images/local-path-provisioner",
        "images/local-path-provisioner/Containerfile",
        LOCAL_PATH_PROVISIONER.version,
        ("local-path-provisioner",),
    ),
    Image(
        "busybox",
        BUSYBOX_IMAGE,
        "images/busybox",
        "images/busybox/Containerfile",
        BUSYBOX_VERSION,
        ("base",),
        (("BUSYBOX_VERSION", BUSYBOX_VERSION),),
    ),
    Image(
        "prometheus",
        PROMETHEUS_IMAGE,
        "images/prometheus",
        "images/prometheus/Containerfile",
        PROMETHEUS_VERSION,
        ("base",),
        (("PROMETHEUS_VERSION", PROMETHEUS_VERSION),),
    ),
)
BINARIES = ("pause", "coredns", "local-path-provisioner")


def image(name: str) -> Image:
    for img in IMAGES:
        if img.name == name:
            return img
    raise BuildError(f"images: no image {name!r} (known: {', '.join(i.name for i in IMAGES)})")


def image_reference(name: str) -> str:
    """The reference the cluster and the chart use for image ``name`` (e.g. "pause")."""
    return image(name).reference


@dataclass(frozen=True)
class ImageArchive:
    name: str
    reference: str
    key: str
    path: Path
    image_id: str
    size: int  # bytes, as podman reports the image (uncompressed)
    build_seconds: float
    built_now: bool = field(default=False, compare=False)


# ----------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""


def parse_apt_sources(text: str) -> list[AptSource]:
    """The ``deb`` entries of an apt sources text, one-line (sources.list) or deb822 (.sources)."""
    out: list[AptSource] = []
    if re.search(r"^\s*Types\s*:", text, re.MULTILINE | re.IGNORECASE):
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            last = ""
            for line in stanza.splitlines():
                if line.lstrip().startswith("#") or not line.strip():
                    continue
                if line[0] in " \t" and last:
                    fields[last] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                last = key.strip().lower()
                fields[last] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                out.append(
                    AptSource(
                        uri,
                        tuple(fields.get("suites", "").split()),
                        tuple(fields.get("components", "").split()),
                        fields.get("signed-by", ""),
                    )
                )
        return out
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        signed = ""
        if words and words[0].startswith("["):
            opts: list[str] = []
            while words and not (opts and opts[-1].endswith("]")):
                opts.append(words.pop(0))
            for opt in " ".join(opts).strip("[]").split():
                if opt.startswith("signed-by="):
                    signed = opt.split("=", 1)[1]
        if len(words) >= 2:
            out.append(AptSource(words[0], (words[1],), tuple(words[2:]), signed))
    return out


def debian_sources(sources: Iterable[AptSource], suite: str = SUITE) -> list[AptSource]:
    """The entries for ``suite`` and its -updates/-security suites (a host's other repos left out)."""
    return [s for s in sources if any(x == suite or x.startswith(f"{suite}-") for x in s.suites)]


def debian_mirror(sources: Iterable[AptSource], suite: str = SUITE) -> str:
    for s in sources:
        if suite in s.suites:
            return s.uri
    raise BuildError(
        f"base image: no apt source for {suite} in /etc/apt: add the Debian mirror to /etc/apt/sources.list"
    )


def render_deb822(sources: Iterable[AptSource]) -> str:
    stanzas = []
    for s in sources:
        lines = [
            "Types: deb",
            f"URIs: {s.uri}",
            f"Suites: {' '.join(s.suites)}",
            f"Components: {' '.join(s.components)}",
        ]
        if s.signed_by:
            lines.append(f"Signed-By: {s.signed_by}")
        stanzas.append("\n".join(lines))
    return "\n\n".join(stanzas) + "\n"


def release_date(release_text: str) -> str:
    """``YYYYMMDD`` of a Release file's ``Date:`` field."""
    match = re.search(r"^Date:\s*(.+)$", release_text, re.MULTILINE)
    if not match:
        raise ValueError("no Date: field")
    return email.utils.parsedate_to_datetime(match.group(1).strip()).strftime("%Y%m%d")


def ulimit_args(nofile: int, nproc: int) -> list[str]:
    """runc refuses rlimits above the host's hard limits ("error setting rlimit type 7"): cap them."""
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def host_limits() -> tuple[int, int]:
    def hard(which: int) -> int:
        value = resource.getrlimit(which)[1]
        return 1048576 if value == resource.RLIM_INFINITY else int(value)

    try:  # runc also refused nproc above kernel.pid_max here ("error setting rlimit type 6")
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 32768
    return hard(resource.RLIMIT_NOFILE), min(hard(resource.RLIMIT_NPROC), pid_max)


def podman_build_argv(
    img: Image,
    *,
    context: Path,
    containerfile: Path,
    key: str,
    limits: tuple[int, int],
    cacert: Path | None,
    podman: str = "podman",
) -> list[str]:
    argv = [podman, "build", "--network", "host", *ulimit_args(*limits), "--file", str(containerfile)]
    argv += ["--tag", img.reference, "--label", f"{KEY_LABEL}={key}"]
    for name, value in img.build_args:
        argv += ["--build-arg", f"{name}={value}"]
    if img.secret and cacert is not None:
        argv += ["--secret", f"id=cacert,src={cacert}"]
    argv.append(str(context))
    return argv


def podman_save_argv(reference: str, dest: Path, podman: str = "podman") -> list[str]:
    return [podman, "save", "--format", "docker-archive", "--output", str(dest), reference]


def ctr_import_argv(address: Path, archive: Path, ctr: str = "ctr") -> list[str]:
    return [ctr, "--address", str(address), "--namespace", "k8s.io", "images", "import", str(archive)]


def _walk(path: Path, base: Path) -> Iterable[tuple[str, Path]]:
    if path.is_file():
        yield path.relative_to(base).as_posix(), path
        return
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                full = Path(dirpath) / name
                yield full.relative_to(base).as_posix(), full


def context_files(img: Image, root: Path) -> list[tuple[str, Path]]:
    """The files an image's content depends on: its context folder (for the pgquorum image, the
    package tree through the symlinks, pyproject.toml, README.md, .dockerignore) and its Containerfile."""
    if img.context == ".":
        parts = [root / "src", root / "pyproject.toml", root / "README.md", root / ".dockerignore"]
    else:
        parts = [root / img.context]
    files = {rel: p for part in parts if part.exists() for rel, p in _walk(part, root)}
    files[img.containerfile] = root / img.containerfile
    return sorted(files.items())


def content_key(img: Image, files: Sequence[tuple[str, Path]], needs: Mapping[str, str]) -> str:
    """sha256 over the image's name, version, build args, files (path and bytes) and the keys of
    what it needs (the base's key, the staged binaries' hashes); 16 hex digits."""
    h = hashlib.sha256()
    h.update(json.dumps([img.name, img.reference, img.version, img.build_args, sorted(needs.items())]).encode())
    for rel, path in files:
        h.update(f"\0{rel}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- executors


def images_dir() -> Path:
    return cache_dir() / "kube" / "images"


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise BuildError(f"images: {name} is not installed: apt-get install {package}")
    return found


def _run(step: str, argv: Sequence[str], *, timeout: float, fix: str = "", **kw: object) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired:
        raise BuildError(f"images: {step} took longer than {timeout:g} s") from None
    except OSError as exc:
        raise BuildError(f"images: {step}: {exc}") from None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "?").splitlines()
        hint = fix
        rlimit = next((x for x in lines if "error setting rlimit" in x), "")
        if rlimit:
            lines.append(rlimit.split("error during container init: ")[-1].strip('"'))
            hint = "an --ulimit above the host's hard limits (ulimit -Hn / -Hu, kernel.pid_max)"
        raise BuildError(f"images: {step} failed: {lines[-1]}" + (f" ({hint})" if hint else ""))
    return str(proc.stdout)


def host_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    texts = []
    if (etc_apt / "sources.list").is_file():
        texts.append((etc_apt / "sources.list").read_text())
    for p in sorted((etc_apt / "sources.list.d").glob("*")):
        if p.suffix in (".list", ".sources"):
            texts.append(p.read_text())
    return [s for t in texts for s in parse_apt_sources(t)]


def base_key(mirror: str, suite: str = SUITE, lists: Path = Path("/var/lib/apt/lists")) -> str:
    """``<suite>-<YYYYMMDD>``: the date of the host's last fetched Release of that mirror (it changes
    when the mirror publishes and the host runs apt-get update), else today's date."""
    mangled = re.sub(r"^[a-z]+://", "", mirror).rstrip("/").replace("/", "_")
    for name in (f"{mangled}_dists_{suite}_InRelease", f"{mangled}_dists_{suite}_Release"):
        try:
            return f"{suite}-{release_date((lists / name).read_text(errors='replace'))}"
        except (OSError, ValueError):
            continue
    return f"{suite}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d')}"


_SLIM_DPKG = """# as Debian's -slim images: no docs, man pages, info or translations
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
_APT_CLEAN = """DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Install-Recommends "false";
"""


def _trim_rootfs(root: Path, sources: Sequence[AptSource]) -> None:
    for pattern in (
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "var/lib/apt/lists/*",
        "var/cache/apt/*",
        "var/cache/debconf/*-old",
        "var/log/*",
    ):
        for p in root.glob(pattern):
            if p.name in ("copyright", "locale.alias", "lock", "partial"):
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for rel in ("etc/resolv.conf", "etc/hostname", "etc/machine-id", "etc/apt/sources.list"):
        (root / rel).unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(render_deb822(sources))
    (root / "etc/dpkg/dpkg.cfg.d/docker").write_text(_SLIM_DPKG)
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(_APT_CLEAN)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# no daemons started by package installs in an image\nexit 101\n")
    policy.chmod(0o755)


def _podman() -> str:
    return _tool("podman", "podman")


def _image_label(podman: str, reference: str, label: str) -> str | None:
    proc = subprocess.run(
        [podman, "image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', reference],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_base(progress: Progress = print) -> str:
    """The debootstrap base as ``debian:12-slim`` in podman's store; returns its key. The rootfs
    tarball is cached per suite and Release date; the import is redone only if the tag differs."""
    podman = _podman()
    sources = host_sources()
    mirror = debian_mirror(sources)
    key = base_key(mirror)
    tarball = images_dir() / "base" / f"debian-{key}.tar"
    with locked(images_dir() / ".base.lock"):
        if not tarball.is_file():
            debootstrap = _tool("debootstrap", "debootstrap")
            started = time.monotonic()
            progress(f"base: debootstrap --variant=minbase {SUITE} from the host's mirror (cold: ~1 min)")
            tarball.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=tarball.parent, prefix=".rootfs-") as tmp:
                rootfs = Path(tmp) / "root"
                _run(
                    "debootstrap",
                    [debootstrap, "--variant=minbase", SUITE, str(rootfs), mirror],
                    timeout=1800,
                    fix=f"check that {SUITE} is reachable on the mirror in /etc/apt",
                )
                _trim_rootfs(rootfs, debian_sources(sources))
                part = Path(tmp) / "rootfs.tar"
                excludes = [f"--exclude=./{d}/*" for d in ("dev", "proc", "sys", "run", "tmp")]
                _run(
                    "tar of the base rootfs",
                    ["tar", "-C", str(rootfs), "--numeric-owner", *excludes, "-cf", str(part), "."],
                    timeout=600,
                )
                os.replace(part, tarball)
            progress(f"base: rootfs {tarball.stat().st_size / 1e6:.0f} MB in {time.monotonic() - started:.0f} s")
        if _image_label(podman, BASE_REFERENCE, BASE_LABEL) != key:
            _run(
                "podman import of the base",
                [
                    podman,
                    "import",
                    "--change",
                    f"LABEL {BASE_LABEL}={key}",
                    "--change",
                    'CMD ["bash"]',
                    str(tarball),
                    BASE_REFERENCE,
                ],
                timeout=600,
            )
            progress(f"base: imported as {BASE_REFERENCE} ({key})")
    return key


def _pause_sources(root: Path) -> list[tuple[str, Path]]:
    return [(rel, p) for rel, p in _walk(root / "images" / "pause", root) if p.suffix in (".go", ".mod", ".sum")]


def _build_component(component: Component, module: str, ldflags: Sequence[str], progress: Progress) -> Path:
    binary = component.binary(component.name)
    with locked(component.directory.parent / f".{component.directory.name}.lock"):
        if component.complete and binary.is_file():
            return binary
        started = time.monotonic()
        progress(f"{component.name} {component.version}: go build {module} (cold: minutes)")
        work = component.directory / "src"
        go_mod = (
            f"module pgquorum.invalid/{component.name}build\n\ngo 1.24.0\n\nrequire {module} v{component.version}\n"
        )
        write_module(work, go_mod)
        go_build(module, binary, cwd=work, ldflags=ldflags)
        component.marker.write_text(f"built in {time.monotonic() - started:.0f} s\n")
        progress(f"{component.name} {component.version}: built in {time.monotonic() - started:.0f} s")
        return binary


def build_binaries(progress: Progress = print, root: Path | None = None) -> dict[str, Path]:
    """The static binaries the scratch images hold: pause (images/pause, keyed by its sources),
    CoreDNS and local-path-provisioner (from their Go modules, keyed by version); CGO_ENABLED=0."""
    root = root or source_root()
    h = hashlib.sha256()
    for rel, p in _pause_sources(root):
        h.update(f"{rel}\0".encode() + p.read_bytes())
    pause = images_dir() / f"pause-{h.hexdigest()[:16]}" / "pause"
    with locked(images_dir() / ".pause.lock"):
        if not pause.is_file():
            progress("pause: go build images/pause")
            go_build(".", pause, cwd=root / "images" / "pause", ldflags=["-s", "-w"])
    coredns = _build_component(
        COREDNS,
        "github.com/coredns/coredns",
        ["-s", "-w", f"-X github.com/coredns/coredns/coremain.GitCommit=v{COREDNS.version}"],
        progress,
    )
    lpp = _build_component(
        LOCAL_PATH_PROVISIONER,
        "github.com/rancher/local-path-provisioner",
        ["-s", "-w", f"-X main.VERSION=v{LOCAL_PATH_PROVISIONER.version}"],
        progress,
    )
    return {"pause": pause, "coredns": coredns, "local-path-provisioner": lpp}


def _source_label(root: Path) -> str:
    urls = _pyproject(root).get("urls")
    if isinstance(urls, dict):
        for k in ("Source", "Repository", "Homepage"):
            if k in urls:
                return str(urls[k])
    return "local-checkout"


def _meta_path(archive: Path) -> Path:
    return archive.with_suffix(".json")


def _read_archive(img: Image, key: str, archive: Path) -> ImageArchive | None:
    try:
        meta = json.loads(_meta_path(archive).read_text())
        if not archive.is_file() or meta["key"] != key:
            return None
        return ImageArchive(
            img.name, img.reference, key, archive, meta["image_id"], meta["size"], meta["build_seconds"]
        )
    except (OSError, ValueError, KeyError):
        return None


def _build_one(
    img: Image, key: str, root: Path, binaries: Mapping[str, Path], archive: Path, progress: Progress
) -> ImageArchive:
    podman = _podman()
    started = time.monotonic()
    staged: Path | None = None
    context, containerfile = root / img.context, root / img.containerfile
    staged_bins = [n for n in img.needs if n in binaries]
    if staged_bins:  # a scratch image: its Containerfile and binary in a context of their own
        staged = Path(tempfile.mkdtemp(dir=images_dir(), prefix=f".ctx-{img.name}-"))
        shutil.copy2(containerfile, staged / "Containerfile")
        for n in staged_bins:
            shutil.copy2(binaries[n], staged / n)
        context, containerfile = staged, staged / "Containerfile"
    build_args = img.build_args
    if img.name == "pgquorum":
        build_args = (*build_args, ("PGQUORUM_SOURCE", _source_label(root)))
    cacert = HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None
    argv = podman_build_argv(
        Image(img.name, img.reference, img.context, img.containerfile, img.version, img.needs, build_args, img.secret),
        context=context,
        containerfile=containerfile,
        key=key,
        limits=host_limits(),
        cacert=cacert,
        podman=podman,
    )
    progress(f"{img.name}: podman build -> {img.reference}")
    try:
        _run(f"podman build of {img.name}", argv, timeout=3600, fix="see the output of: " + " ".join(argv))
    finally:
        if staged:
            shutil.rmtree(staged, ignore_errors=True)
    seconds = time.monotonic() - started
    inspect = json.loads(
        _run(f"podman image inspect {img.reference}", [podman, "image", "inspect", img.reference], timeout=60)
    )
    image_id, size = str(inspect[0]["Id"]), int(inspect[0]["Size"])
    tmp = archive.with_name(f".{archive.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        _run(f"podman save of {img.reference}", podman_save_argv(img.reference, tmp, podman), timeout=1200)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "reference": img.reference,
        "key": key,
        "image_id": image_id,
        "size": size,
        "build_seconds": round(seconds, 1),
    }
    _meta_path(archive).write_text(json.dumps(meta, indent=1) + "\n")
    for old in archive.parent.glob(f"{img.name}-{img.version}-*.tar"):  # earlier keys of this image
        if old != archive:
            old.unlink(missing_ok=True)
            _meta_path(old).unlink(missing_ok=True)
    progress(f"{img.name}: {size / 1e6:.0f} MB in {seconds:.0f} s")
    return ImageArchive(img.name, img.reference, key, archive, image_id, size, seconds, built_now=True)


def image_keys(
    root: Path, base: str, binaries: Mapping[str, Path], only: Iterable[str] | None = None
) -> dict[str, str]:
    wanted = set(only) if only is not None else None
    keys = {}
    bin_hashes = {n: file_hash(p) for n, p in binaries.items()}
    for img in IMAGES:
        if wanted is None or img.name in wanted:
            needs = {n: (base if n == "base" else bin_hashes[n]) for n in img.needs}
            keys[img.name] = content_key(img, context_files(img, root), needs)
    return keys


def ensure_images(progress: Progress = print, only: Iterable[str] | None = None) -> list[ImageArchive]:
    """Every image (or those named in ``only``) as a docker-archive in the cache for its current
    content key, building the missing ones first; returns them in IMAGES order."""
    root = source_root()
    names = [image(n).name for n in only] if only is not None else [i.name for i in IMAGES]
    selected = [i for i in IMAGES if i.name in names]
    needs = {n for i in selected for n in i.needs}
    base = build_base(progress) if "base" in needs else ""
    binaries = build_binaries(progress, root) if needs & set(BINARIES) else {}
    keys = image_keys(root, base, binaries, names)
    out = []
    images_dir().mkdir(parents=True, exist_ok=True)
    for img in selected:
        archive = images_dir() / f"{img.name}-{img.version}-{keys[img.name]}.tar"
        with locked(images_dir() / f".{img.name}.lock"):
            cached = _read_archive(img, keys[img.name], archive)
            out.append(cached or _build_one(img, keys[img.name], root, binaries, archive, progress))
    return out


def _containerd_config_digest(ctr: str, address: Path, reference: str, timeout: float) -> str | None:
    base = [ctr, "--address", str(address), "--namespace", "k8s.io"]
    listing = _run("ctr images ls", [*base, "images", "ls"], timeout=timeout)
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3 and cols[0] == reference:
            manifest = subprocess.run(
                [*base, "content", "get", cols[2]], capture_output=True, text=True, timeout=timeout
            )
            try:
                return str(json.loads(manifest.stdout)["config"]["digest"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def load_images(archives: Iterable[ImageArchive], containerd_address: Path, timeout: float = 300.0) -> list[str]:
    """``ctr -n k8s.io images import`` each archive into the containerd at ``containerd_address``,
    skipping those whose reference there already has the same image (config digest); idempotent.
    Returns the references imported now."""
    ctr = _tool("ctr", "containerd")
    if not containerd_address.exists():
        raise BuildError(f"images: no containerd socket at {containerd_address}: start the node's containerd first")
    imported = []
    for arc in archives:
        if _containerd_config_digest(ctr, containerd_address, arc.reference, timeout) == f"sha256:{arc.image_id}":
            continue
        _run(f"ctr import of {arc.reference}", ctr_import_argv(containerd_address, arc.path, ctr), timeout=timeout)
        imported.append(arc.reference)
    return imported


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pgquorum.kube.images", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the missing images into the cache; print reference, size, build time")
    b.add_argument("--only", action="append", metavar="NAME", choices=[i.name for i in IMAGES])
    ld = sub.add_parser("load", help="build if needed, then import into a containerd")
    ld.add_argument("--address", type=Path, required=True, help="the containerd socket")
    ld.add_argument("--only", action="append", metavar="NAME", choices=[i.name for i in IMAGES])
    args = parser.parse_args(argv)
    try:
        archives = ensure_images(lambda line: print(f"  {line}", file=sys.stderr, flush=True), args.only)
        for arc in archives:
            how = (
                f"built in {arc.build_seconds:.0f} s"
                if arc.built_now
                else f"cached (built in {arc.build_seconds:.0f} s)"
            )
            print(f"{arc.reference:60} {arc.size / 1e6:7.1f} MB  {how}")
        if args.command == "load":
            done = load_images(archives, args.address)
            print(f"imported into {args.address}: {', '.join(done) or 'nothing (all present)'}")
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

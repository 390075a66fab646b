"""The cluster's own PKI, made with ``openssl``: a CA, serving and client certificates, and the
service-account signing key pair.

Which certificates exist and what they say is a pure function of the plan (``certificate_specs``);
``ensure_pki`` only runs openssl for files that are missing, so a cluster brought up again keeps
its identities (and a user's kubeconfig stays valid).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pgquorum.kube.plan import ClusterPlan

CA_DAYS = 3650
CERT_DAYS = 825


class PkiError(RuntimeError):
    pass


@dataclass(frozen=True)
class CertSpec:
    name: str  # file stem: <name>.crt / <name>.key
    common_name: str
    organization: str | None = None
    ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    server: bool = False
    client: bool = False

    def extensions(self) -> str:
        usages = [u for u, on in (("serverAuth", self.server), ("clientAuth", self.client)) if on]
        lines = [
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature, keyEncipherment",
            f"extendedKeyUsage = {', '.join(usages)}",
        ]
        sans = [f"IP:{ip}" for ip in self.ips] + [f"DNS:{d}" for d in self.dns]
        if sans:
            lines.append(f"subjectAltName = {', '.join(sans)}")
        return "\n".join(lines) + "\n"

    def subject(self) -> str:
        return (f"/O={self.organization}" if self.organization else "") + f"/CN={self.common_name}"


def certificate_specs(plan: ClusterPlan) -> list[CertSpec]:
    domain = plan.cluster_domain
    specs = [
        CertSpec(
            "apiserver",
            "kube-apiserver",
            ips=(plan.apiserver_addr, plan.kubernetes_service_ip, "127.0.0.1"),
            dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{domain}"),
            server=True,
        ),
        # the apiserver calling kubelets (logs, exec, port-forward)
        CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", client=True),
        CertSpec("admin", "kubernetes-admin", "system:masters", client=True),
        CertSpec("controller-manager", "system:kube-controller-manager", client=True),
        CertSpec("scheduler", "system:kube-scheduler", client=True),
        CertSpec("kube-proxy", "system:kube-proxy", client=True),
    ]
    for node in plan.nodes:
        # Node authorizer + NodeRestriction: the identity must be exactly system:node:<name> in system:nodes
        specs.append(CertSpec(f"kubelet-{node.name}", f"system:node:{node.name}", "system:nodes", client=True))
        specs.append(
            CertSpec(
                f"kubelet-{node.name}-serving",
                f"system:node:{node.name}",
                ips=(node.addr,),
                dns=(node.name,),
                server=True,
            )
        )
    return specs


def _openssl(args: list[str], *, stdin: str | None = None) -> None:
    try:
        proc = subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise PkiError("openssl is missing: apt-get install openssl") from None
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {(proc.stderr.strip() or '?').splitlines()[-1]}")


def _ec_key(path: Path) -> None:
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)])
    path.chmod(0o600)


def ensure_pki(plan: ClusterPlan) -> Path:
    """Create whatever of the PKI is missing under ``plan.pki_dir``; returns that directory."""
    pki = plan.pki_dir
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    ca_crt, ca_key = pki / "ca.crt", pki / "ca.key"
    if not ca_crt.exists() or not ca_key.exists():
        _ec_key(ca_key)
        _openssl(
            [
                "req", "-x509", "-new", "-key", str(ca_key), "-subj", f"/CN=pgquorum-kube-ca-{plan.name}",
                "-days", str(CA_DAYS), "-out", str(ca_crt),
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ]
        )  # fmt: skip
    for spec in certificate_specs(plan):
        crt, key = pki / f"{spec.name}.crt", pki / f"{spec.name}.key"
        if crt.exists() and key.exists():
            continue
        _ec_key(key)
        with tempfile.TemporaryDirectory() as tmp:
            csr, ext = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
            ext.write_text(spec.extensions())
            _openssl(["req", "-new", "-key", str(key), "-subj", spec.subject(), "-out", str(csr)])
            _openssl(
                [
                    "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
                    "-days", str(CERT_DAYS), "-extfile", str(ext), "-out", str(crt),
                ]
            )  # fmt: skip
    sa_key, sa_pub = pki / "sa.key", pki / "sa.pub"
    if not sa_key.exists() or not sa_pub.exists():
        _openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(sa_key)])
        sa_key.chmod(0o600)
        _openssl(["pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)])
    return pki

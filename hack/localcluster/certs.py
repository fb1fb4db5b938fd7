"""The local cluster's certificate authority and the certificates signed by it.

Called by cluster.py when it prepares a state directory. Uses the openssl command
line tool, so that the kit needs no Python package beyond the standard library.
Keys are ECDSA P-256: generating them takes milliseconds, where RSA takes a noticeable
share of the cluster's start time on a small machine.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "ensure"]

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

# The apiserver is reached on loopback and, from inside pods on a real cluster, under
# the names of the kubernetes Service; 10.0.0.1 is the first address of the
# service range cluster.py passes to the apiserver.
_APISERVER_NAMES = (
    "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
    "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
)


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files in a state directory's pki folder."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def service_account_key(self) -> Path:
        """Signs ServiceAccount tokens (apiserver) and verifies them."""
        return self.dir / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.dir / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


# name -> (subject, extended key usage, subject alternative names). Client
# certificates authenticate as CN (user) and O (group): system:masters bypasses RBAC,
# which the admin and the apiserver's calls to the kubelet need.
_LEAVES = {
    "apiserver": ("/CN=kube-apiserver", "serverAuth", _APISERVER_NAMES),
    "admin": ("/O=system:masters/CN=admin", "clientAuth", ""),
    "apiserver-kubelet-client": (
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "clientAuth",
        "",
    ),
    "kubelet": ("/CN=localcluster-kubelet", "serverAuth", "IP:127.0.0.1,DNS:localhost"),
}


def ensure(directory: Path) -> Pki:
    """Create whatever is missing of the CA, the leaf certificates and the SA key.

    Existing files are kept: they do not depend on ports, so a restarted cluster in the
    same state directory keeps trusting the same CA.
    """
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not pki.ca_cert.exists():
        _openssl(
            "req", "-x509", *_EC, "-keyout", pki.ca_key, "-out", pki.ca_cert,
            "-days", "3650", "-subj", "/CN=localcluster-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
    for name, (subject, usage, alt_names) in _LEAVES.items():
        if not pki.cert(name).exists():
            _issue(pki, name=name, subject=subject, usage=usage, alt_names=alt_names)
    if not pki.service_account_pub.exists():
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout",
                 "-out", pki.service_account_key)  # fmt: skip
        _openssl("ec", "-in", pki.service_account_key, "-pubout", "-out", pki.service_account_pub)
    return pki


def _issue(pki: Pki, *, name: str, subject: str, usage: str, alt_names: str) -> None:
    args: list[str | Path] = [
        "req", "-x509", *_EC, "-keyout", pki.key(name), "-out", pki.cert(name),
        "-days", "825", "-subj", subject, "-CA", pki.ca_cert, "-CAkey", pki.ca_key,
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext", f"extendedKeyUsage={usage}",
    ]  # fmt: skip
    if alt_names:
        args += ["-addext", f"subjectAltName={alt_names}"]
    _openssl(*args)


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")

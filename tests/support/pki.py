"""A throwaway PKI made with the ``openssl`` CLI, the same commands deploy/mosquitto/README.md shows.

Tests need a CA, a broker certificate valid for 127.0.0.1/localhost and one
client certificate per device (CN = device id), sometimes from a second CA to
prove the broker refuses it.  EC P-256 keys keep generation fast; keys are
mode 600 because the agent refuses a key others can read.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_CA_CNF = (
    "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n[dn]\n[v3_ca]\n"
    "basicConstraints=critical,CA:TRUE\n"
    "keyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\n"
)
_LEAF_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid,issuer\n"
)


@dataclass(frozen=True, slots=True)
class CertKey:
    """A certificate and its private key, as paths for tls_set / mosquitto."""

    cert: Path
    key: Path


def openssl(*args: str, cwd: Path) -> None:
    """Run one openssl command; its stderr in the failure says what went wrong."""
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")


class Pki:
    """One CA in ``directory``; ``server()`` and ``client()`` issue certificates from it."""

    def __init__(
        self, directory: Path, name: str = "test-ca", days: int = 2, rsa: bool = False
    ) -> None:
        self.dir = directory
        self.days = days
        self.rsa = rsa  # RSA 2048 instead of EC P-256 (bigger records on the wire)
        directory.mkdir(parents=True, exist_ok=True)
        self._key(f"{name}.key")
        (directory / f"{name}.cnf").write_text(_CA_CNF)
        openssl(
            "req",
            "-x509",
            "-new",
            "-key",
            f"{name}.key",
            "-sha256",
            "-days",
            str(days),
            "-subj",
            f"/CN={name}",
            "-config",
            f"{name}.cnf",
            "-out",
            f"{name}.crt",
            cwd=directory,
        )
        self.ca = CertKey(directory / f"{name}.crt", directory / f"{name}.key")

    def _key(self, file: str) -> Path:
        algorithm = ["RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
        if not self.rsa:
            algorithm = ["EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
        openssl("genpkey", "-algorithm", *algorithm, "-out", file, cwd=self.dir)
        path = self.dir / file
        path.chmod(0o600)
        return path

    def _issue(self, file: str, cn: str, ext: str) -> CertKey:
        key = self._key(f"{file}.key")
        openssl(
            "req",
            "-new",
            "-key",
            key.name,
            "-subj",
            f"/CN={cn}",
            "-out",
            f"{file}.csr",
            cwd=self.dir,
        )
        (self.dir / f"{file}.ext").write_text(_LEAF_EXT + ext)
        openssl(
            "x509",
            "-req",
            "-in",
            f"{file}.csr",
            "-CA",
            self.ca.cert.name,
            "-CAkey",
            self.ca.key.name,
            "-CAcreateserial",
            "-sha256",
            "-days",
            str(self.days),
            "-extfile",
            f"{file}.ext",
            "-out",
            f"{file}.crt",
            cwd=self.dir,
        )
        return CertKey(self.dir / f"{file}.crt", key)

    def server(self, file: str = "server", hosts: tuple[str, ...] = ("localhost",)) -> CertKey:
        """The broker's certificate: SAN for ``hosts`` and 127.0.0.1 (clients check it)."""
        names = [f"DNS:{h}" for h in hosts] + ["IP:127.0.0.1"]
        ext = f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(names)}\n"
        return self._issue(file, hosts[0], ext)

    def client(self, cn: str, file: str | None = None) -> CertKey:
        """A client certificate with CN = ``cn`` (the device id; mosquitto's username)."""
        return self._issue(file or cn, cn, "extendedKeyUsage=clientAuth\n")

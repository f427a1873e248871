"""TLS certificates for tests, made by the openssl command."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and one certificate it signed for localhost and 127.0.0.1, made by openssl."""
    cert, key, ca = directory / "node.pem", directory / "node.key", directory / "ca.pem"
    ca_key = directory / "ca.key"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=asyncjobs test CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(directory / "node.csr"), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(directory / "node.csr"), "-CA", str(ca), "-CAkey",
        str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile",
        str(ext))
    return cert, key, ca

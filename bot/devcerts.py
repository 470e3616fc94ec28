"""Throwaway TLS material for running without a public certificate (demo, tests, emulator).

One local CA issues one certificate for localhost and 127.0.0.1; the emulator and the bot both
use it and both trust the CA. Never for production: `serve` takes a real certificate.

The CA's own key is never written: only its certificate (ca.pem), the leaf's chain (cert.pem) and
the leaf's key (key.pem, mode 0600). The caller picks the directory and owns its lifetime (the
demo writes under its --out directory, the tests under pytest's tmp_path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class DevCerts:
    ca_file: str
    cert_file: str
    key_file: str


def _write(path: str, data: bytes, mode: int) -> None:
    """Write atomically (a temporary file renamed over `path`) with `mode` from the start, so the
    private key is never readable by others, not even for a moment."""
    temporary = f"{path}.tmp{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def make_dev_certs(
    directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> DevCerts:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*names)
    paths = DevCerts(
        str(directory / "ca.pem"), str(directory / "cert.pem"), str(directory / "key.pem")
    )
    _write(paths.ca_file, ca.cert_pem.bytes(), 0o644)
    _write(paths.key_file, leaf.private_key_pem.bytes(), 0o600)
    _write(paths.cert_file, b"".join(blob.bytes() for blob in leaf.cert_chain_pems), 0o644)
    return paths

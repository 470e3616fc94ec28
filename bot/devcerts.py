"""Throwaway TLS material for running without a public certificate (demo, tests, emulator).

One local CA issues one certificate for localhost and 127.0.0.1; the emulator and the bot both
use it and both trust the CA. Never for production: `serve` takes a real certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class DevCerts:
    ca_file: str
    cert_file: str
    key_file: str


def make_dev_certs(
    directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> DevCerts:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*names)
    paths = DevCerts(
        str(directory / "ca.pem"), str(directory / "cert.pem"), str(directory / "key.pem")
    )
    ca.cert_pem.write_to_path(paths.ca_file)
    leaf.private_key_pem.write_to_path(paths.key_file)
    with open(paths.cert_file, "wb") as out:
        for blob in leaf.cert_chain_pems:
            out.write(blob.bytes())
    return paths

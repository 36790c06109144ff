"""gRPC server credentials from the `server.tls` config section.

grpcio reports a bad certificate or key only as a failed bind with no reason, so the files are read
and given a first look here, where the error can name the file and the config key.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from extproc.config import ConfigError, TlsConfig


def _pem(path: Path, source: Path, key: str, marker: bytes, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise ConfigError(source, key, f"{path} holds no PEM {what}")
    return data


def server_credentials(tls: TlsConfig, source: Path) -> grpc.ServerCredentials:
    """TLS, and with `client_ca_file` mutual TLS: a client without a certificate signed by that CA is refused."""
    cert = _pem(tls.cert_file, source, "server.tls.cert_file", b"CERTIFICATE-----", "certificate")
    key = _pem(tls.key_file, source, "server.tls.key_file", b"PRIVATE KEY-----", "private key")
    client_ca = None
    if tls.client_ca_file is not None:
        client_ca = _pem(tls.client_ca_file, source, "server.tls.client_ca_file", b"CERTIFICATE-----", "certificate")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )

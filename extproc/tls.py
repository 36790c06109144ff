"""Transport security of the listeners: gRPC server credentials from the `server.tls` config section, and
the rule that a plaintext listener stays on loopback unless the config allows otherwise.

grpcio reports a bad certificate or key only as a failed bind with no reason, so the files are read
and given a first look here, where the error can name the file and the config key.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.errors import ConfigError, ExtprocError

if TYPE_CHECKING:
    import grpc

    from extproc.config import ListenAddress, ServerConfig, TlsConfig


class PlaintextRefused(ExtprocError, ValueError):
    """A plaintext listener would be reachable from other machines without the config allowing it."""

    def __init__(self, address: ListenAddress, *, admin: bool) -> None:
        what = "the admin endpoint (plain HTTP)" if admin else "plaintext gRPC (no server.tls)"
        super().__init__(
            f"{what} would listen on {address}, which is not loopback; "
            "set server.allow_plaintext_off_loopback: true to allow it"
        )
        self.admin = admin


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_plaintext(server: ServerConfig, address: ListenAddress, *, tls_applies: bool) -> None:
    """Raise PlaintextRefused if `address` would serve plaintext off loopback without permission.

    `tls_applies` is false for the admin endpoint, which is always plain HTTP.
    """
    plaintext = not tls_applies or server.tls is None
    if plaintext and not server.allow_plaintext_off_loopback and not is_loopback(address.host):
        raise PlaintextRefused(address, admin=not tls_applies)


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
    # Imported here: the config loader imports this module for the plaintext rule, and the commands that
    # only read a config (check, envoy-config) start without loading gRPC.
    import grpc

    cert = _pem(tls.cert_file, source, "server.tls.cert_file", b"CERTIFICATE-----", "certificate")
    key = _pem(tls.key_file, source, "server.tls.key_file", b"PRIVATE KEY-----", "private key")
    client_ca = None
    if tls.client_ca_file is not None:
        client_ca = _pem(tls.client_ca_file, source, "server.tls.client_ca_file", b"CERTIFICATE-----", "certificate")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )

"""mTLS between Envoy and the server, with certificates made here; clients without a valid one are refused."""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.plugins import scripted

from .conftest import StackFactory
from .harness import Upstream, request

pytestmark = pytest.mark.e2e

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    def pair(self) -> tuple[bytes, bytes]:
        return self.key.read_bytes(), self.cert.read_bytes()


class Authority:
    """A throwaway CA that writes PEM files into `folder`."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_file = folder / f"{name}.pem"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(getattr(self, "name", subject))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    def issue(self, name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = self._builder(subject, key.public_key()).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return issued


def envoy_tls(ca: Authority, client: Issued) -> dict[str, Any]:
    """The ext_proc cluster's transport socket: present `client`, trust only `ca`."""
    return {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TLS,
                "sni": "localhost",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(client.cert)},
                            "private_key": {"filename": str(client.key)},
                        }
                    ],
                    "validation_context": {
                        "trusted_ca": {"filename": str(ca.cert_file)},
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}],
                    },
                },
            },
        }
    }


def health(port: int, credentials: grpc.ChannelCredentials | None) -> str:
    """The health status a client gets, or the gRPC status code name it fails with."""
    target = f"localhost:{port}"
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Issued, Issued, Issued]:
    """(CA, server cert, client cert of the CA, client cert of another CA)."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = Authority(folder, "extproc-test-ca")
    stranger = Authority(folder, "stranger-ca")
    return (
        ca,
        ca.issue("server", server=True),
        ca.issue("envoy", server=False),
        stranger.issue("intruder", server=False),
    )


def test_mtls_between_envoy_and_server(
    plugin_dir: Path, make_stack: StackFactory, pki: tuple[Authority, Issued, Issued, Issued]
) -> None:
    ca, server, client, intruder = pki
    output = {"headers": {"set": [{"name": "x-over-tls", "value": "yes"}]}}
    plugin = scripted(plugin_dir, "tag", process_request_headers=output)
    tls = {"cert_file": str(server.cert), "key_file": str(server.key), "client_ca_file": str(ca.cert_file)}
    config = json.dumps({"server": {"tls": tls}, "plugins": [plugin]})
    trusted_ca = ca.cert_file.read_bytes()
    with make_stack(config, extproc_cluster=envoy_tls(ca, client)) as stack:
        response = request("GET", f"{stack.url}/tls")
        port = stack.extproc_port
        statuses = {
            "plaintext": health(port, None),
            "no client certificate": health(port, grpc.ssl_channel_credentials(trusted_ca)),
            "certificate of another CA": health(port, grpc.ssl_channel_credentials(trusted_ca, *intruder.pair())),
            "valid client certificate": health(port, grpc.ssl_channel_credentials(trusted_ca, *client.pair())),
        }
        handshakes = stack.envoy_stat("cluster.extproc.ssl.handshake")

    assert response.status == 200
    assert ("x-over-tls", "yes") in [tuple(pair) for pair in response.json()["headers"]]
    assert handshakes >= 1
    assert statuses == {
        "plaintext": "UNAVAILABLE",
        "no client certificate": "UNAVAILABLE",
        "certificate of another CA": "UNAVAILABLE",
        "valid client certificate": "SERVING",
    }


def test_envoy_with_a_foreign_certificate_is_refused(
    plugin_dir: Path, make_stack: StackFactory, upstream: Upstream, pki: tuple[Authority, Issued, Issued, Issued]
) -> None:
    ca, server, _client, intruder = pki
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm")}
    tls = {"cert_file": str(server.cert), "key_file": str(server.key), "client_ca_file": str(ca.cert_file)}
    config = json.dumps({"server": {"tls": tls}, "plugins": [plugin]})
    with make_stack(config, extproc_cluster=envoy_tls(ca, intruder)) as stack:
        before = upstream.count()
        response = request("GET", f"{stack.url}/refused")
        after = upstream.count()

    # failure_mode_allow is off: without an ext_proc stream the request goes nowhere.
    assert response.status == 500
    assert after == before

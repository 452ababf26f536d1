"""Real plant-protocol peers on 127.0.0.1 for the opcua, s7 and enip output tests: an asyncua OPC UA
server (user/password, optionally Basic256Sha256 with certificates), python-snap7's S7 server and
cpppo's EtherNet/IP Logix simulator (a subprocess, so that killing it is a PLC lost mid-run).

Import by name from the test modules: `from plant_fixtures import ua_server`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from signals_fixtures import LOOPBACK, free_port, need_module, port_open

USER, PASSWORD = "edgead", "s3cret-pw"
NS = "urn:edgead:test:mes"
# the MES's own node types: edgead converts to each (seq Int32, parts UInt32, wall_time DateTime, ...)
UA_VARIABLES = {"event_id": ("String", ""), "seq": ("Int32", 0), "decision": ("String", ""), "score": ("Double", 0.0),
                "threshold": ("Double", 0.0), "reason": ("String", ""), "wall_time": ("DateTime", None),
                "parts": ("UInt32", 0), "rejects": ("UInt32", 0), "status": ("String", ""), "alarm": ("String", ""),
                "rejected": ("Boolean", False)}


def ua_node(name: str) -> str:
    return f"ns=2;s=Line1.{name}"


class UaPeer:
    """An asyncua server on its own thread and event loop; stop()/start() is a server lost and back."""

    def __init__(self, port: int, security: tuple[Path, Path] | None = None) -> None:
        from asyncua.crypto.permission_rules import User, UserRole

        class Users:
            def get_user(self, iserver: Any, username: Any = None, password: Any = None, certificate: Any = None) -> Any:
                return User(role=UserRole.User) if (username, password) == (USER, PASSWORD) else None

        self.port, self.url = port, f"opc.tcp://{LOOPBACK}:{port}/"
        self.security, self._users = security, Users()
        self.server: Any = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        logging.getLogger("asyncua").setLevel(logging.ERROR)     # its warnings flood a failing test's output

    def _run(self, coro: Any, timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from asyncua import Server, ua

        s = Server(user_manager=self._users)
        await s.init()
        s.set_endpoint(self.url)
        if self.security:
            await s.load_certificate(str(self.security[0]))
            await s.load_private_key(str(self.security[1]))
            s.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        else:
            s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        s.set_security_IDs(["Username"])
        idx = await s.register_namespace(NS)
        assert idx == 2
        line = await s.nodes.objects.add_object(ua.NodeId("Line1", idx), "Line1")
        for name, (kind, value) in UA_VARIABLES.items():
            vt = getattr(ua.VariantType, kind)
            value = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc) if kind == "DateTime" else value
            var = await line.add_variable(ua.NodeId(f"Line1.{name}", idx), name, ua.Variant(value, vt))
            await var.set_writable()
        ro = await line.add_variable(ua.NodeId("Line1.readonly", idx), "readonly", ua.Variant("", ua.VariantType.String))
        assert ro is not None
        await s.start()
        self.server = s

    def start(self) -> None:
        self._run(self._start())

    def stop(self) -> None:
        if self.server is not None:
            self._run(self.server.stop())
            self.server = None

    def values(self) -> dict[str, Any]:
        """Every variable as a separate client (user and password) reads it."""
        return self._run(self._read())

    async def _read(self) -> dict[str, Any]:
        from asyncua import Client

        c = Client(self.url, timeout=3)
        c.set_user(USER)
        c.set_password(PASSWORD)
        if self.security:
            from asyncua.crypto import security_policies
            from asyncua import ua

            await c.set_security(security_policies.SecurityPolicyBasic256Sha256, certificate=str(self.security[0]),
                                 private_key=str(self.security[1]), mode=ua.MessageSecurityMode.SignAndEncrypt)
        await c.connect()
        try:
            return {n: await c.get_node(ua_node(n)).read_value() for n in UA_VARIABLES}
        finally:
            await c.disconnect()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def ua_server() -> Iterator[UaPeer]:
    """One server per module (its start costs a second or two); a test that stops it starts it again."""
    need_module("asyncua", 'asyncua is not installed (pip install "edgead[plant]", Python 3.10+)')
    peer = UaPeer(free_port())
    peer.start()
    try:
        yield peer
    finally:
        peer.close()


def self_signed(folder: Path, name: str, uri: str) -> tuple[Path, Path]:
    """A certificate (DER) and key (PEM) with the application URI OPC UA checks, for loopback only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# ---------------------------------------------------------------- Siemens S7


class S7Peer:
    """python-snap7's S7 server with DB 10 (32 bytes) registered; its memory is what the PLC program reads."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.db = bytearray(32)
        self.server: Any = None

    def start(self) -> None:
        from snap7 import Server, SrvArea

        self.server = Server(log=False)
        self.server.register_area(SrvArea.DB, 10, self.db)
        self.server.start(tcp_port=self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def word(self, offset: int) -> int:
        return int.from_bytes(self.db[offset:offset + 2], "big")


@pytest.fixture
def s7_server() -> Iterator[S7Peer]:
    need_module("snap7", 'python-snap7 is not installed (pip install "edgead[plant]", Python 3.10+)')
    peer = S7Peer(free_port())
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


# ---------------------------------------------------------------- EtherNet/IP (Allen-Bradley Logix)


class EnipPeer:
    """cpppo's EtherNet/IP Logix simulator with controller tags Reject (BOOL), Kick (DINT) and Beat (DINT)."""

    TAGS = ("Reject=BOOL", "Kick=DINT", "Beat=DINT")

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cpppo.server.enip", "--address", f"{LOOPBACK}:{self.port}",
                                      *self.TAGS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the cpppo EtherNet/IP simulator did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None

    def read(self, tag: str) -> Any:
        from pylogix import PLC

        with PLC(LOOPBACK, port=self.port, timeout=2.0) as plc:
            reply = plc.Read(tag)
        assert reply.Status == "Success", reply.Status
        return reply.Value


@pytest.fixture
def enip_server() -> Iterator[EnipPeer]:
    need_module("pylogix", 'pylogix is not installed (pip install "edgead[plant]")')
    need_module("cpppo", 'cpppo (the EtherNet/IP simulator the tests use) is not installed (pip install "edgead[dev]")')
    peer = EnipPeer(free_port())
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()

"""libp2p's TLS 1.3 security transport, roster-gated, with a session that batches socket I/O.

Theory of operation: py-libp2p 0.8.1 ships the standard libp2p TLS handshake (``/tls/1.0.0``,
as go- and js-libp2p speak it): each side presents a self-signed certificate for an
ephemeral ECDSA key, and a certificate extension carries the host's identity key with its
signature over that certificate key. OpenSSL's TLS 1.3 handshake proves possession of the
certificate key; the extension's signature binds it to the identity key, hence to the peer
ID. ``GatedTLS`` keeps that handshake and adds three things:

- ``bound_host_key`` is the only way a certificate turns into an identity here: the
  certificate's validity, its self-signature and the extension's signature over its key are
  checked (``verify_certificate_chain``) before the identity key is believed; a certificate
  naming a member's key that the member did not sign is refused.
- The roster gate runs right after the handshake in both directions (``Admission``), as for
  Noise, before any muxer or stream exists.
- The admitted session becomes a ``BufferedTlsSession`` (change ``buffered-tls-session`` in
  ``libp2p_compat``): py-libp2p's own reads 4 KiB from the socket per call and hands out
  one TLS record at a time. Same SSL object, same bytes on the wire.

SSL contexts are built once per direction (py-libp2p builds one per connection, writing the
certificate key to a temporary file each time).
"""

from __future__ import annotations

import ssl
from typing import Any, cast

from cryptography import x509
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.crypto.keys import KeyPair, PublicKey
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.secure_session import SecureSession
from libp2p.security.tls.certificate import verify_certificate_chain
from libp2p.security.tls.io import TLSReadWriter
from libp2p.security.tls.transport import TLSTransport

from p2pfed.transport.libp2p_compat import (
    TakenOverSession,
    _require,
    check_libp2p,
    unsupported,
)
from p2pfed.transport.libp2p_gate import Admission

_TLS = "libp2p.security.tls"
TLS_REQUIREMENTS = (
    _require(
        "gated-tls", f"{_TLS}.transport:TLSTransport.__init__", "self, libp2p_keypair", "prefix"
    ),
    _require("gated-tls", f"{_TLS}.transport:TLSTransport.secure_inbound", "self, conn"),
    _require("gated-tls", f"{_TLS}.transport:TLSTransport.secure_outbound", "self, conn, peer_id"),
    _require(
        "gated-tls", f"{_TLS}.transport:TLSTransport._extract_public_key_from_cert", "self, cert"
    ),
    _require("gated-tls", f"{_TLS}.transport:TLSTransport.create_ssl_context", "self, server_side"),
    _require("gated-tls", f"{_TLS}.certificate:verify_certificate_chain", "cert_chain"),
    _require(
        "buffered-tls-session",
        f"{_TLS}.io:TLSStreamReadWriter.__init__",
        "self, conn, ssl_context, local_prim_pk, server_side, server_hostname",
    ),
)
"""What ``GatedTLS`` and ``BufferedTlsSession`` reach in py-libp2p (checked at import, as
``libp2p_compat`` checks its own): a renamed ``_extract_public_key_from_cert`` would
silently bypass ``bound_host_key``."""

check_libp2p(TLS_REQUIREMENTS)

READ_SIZE = 256 * 1024
"""Most ciphertext bytes ``BufferedTlsSession`` takes from the socket per read."""


def bound_host_key(cert: x509.Certificate) -> PublicKey:
    """The identity key ``cert``'s libp2p extension carries, once its signatures check out.

    Raises ``HandshakeFailure`` for an expired certificate, a broken self-signature, a
    missing extension, or an extension whose identity key did not sign the certificate key.
    """
    try:
        return verify_certificate_chain([cert])
    except Exception as exc:
        raise HandshakeFailure(f"TLS certificate does not bind a libp2p identity: {exc}") from exc


class GatedTLS(TLSTransport):
    """libp2p TLS 1.3 that refuses any authenticated peer ``admission`` does not admit."""

    def __init__(self, key_pair: KeyPair, admission: Admission) -> None:
        super().__init__(key_pair)
        self.admission = admission
        self._contexts: dict[bool, ssl.SSLContext] = {}

    def create_ssl_context(self, server_side: bool = False) -> ssl.SSLContext:
        context = self._contexts.get(server_side)
        if context is None:
            context = self._contexts[server_side] = super().create_ssl_context(server_side)
        return context

    def _extract_public_key_from_cert(self, cert: x509.Certificate) -> Any:
        return bound_host_key(cert)

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        secured = await super().secure_inbound(conn)
        await self.admission.admit(secured, "inbound")
        return buffered_tls(secured)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        secured = await super().secure_outbound(conn, peer_id)
        await self.admission.admit(secured, "outbound")
        return buffered_tls(secured)


def buffered_tls(secured: ISecureConn) -> ISecureConn:
    """``secured`` as a ``BufferedTlsSession`` if it is a finished TLS session."""
    if isinstance(secured, SecureSession) and isinstance(secured.conn, TLSReadWriter):
        return BufferedTlsSession(secured)
    return secured


class BufferedTlsSession(TakenOverSession[TLSReadWriter]):
    """py-libp2p's TLS ``SecureSession`` after the handshake, with fewer, larger socket calls.

    The SSL object and memory BIOs of the handshake stay in charge of the records (so the
    bytes on the wire are OpenSSL's, as before); this session feeds the input BIO up to
    ``READ_SIZE`` bytes per socket read and decrypts straight into the caller's buffer, and
    sends everything one ``write`` produced in one socket call.
    """

    def __init__(self, handshaken: SecureSession) -> None:
        super().__init__(handshaken, TLSReadWriter, "TLS")
        try:
            tls = self.conn.stream_writer
            self._raw = tls.raw_connection
            self._ssl: ssl.SSLObject = tls._ssl_socket
            self._in: ssl.MemoryBIO = tls._in_bio
            self._out: ssl.MemoryBIO = tls._out_bio
        except AttributeError as exc:
            raise unsupported(
                "buffered-tls-session",
                "libp2p",
                f"keeps no {exc.name} on its TLS session after the handshake",
            ) from None
        self._eof = False

    async def _flush(self) -> None:
        pending = self._out.read()
        if pending:
            await self._raw.write(pending)

    async def _feed(self) -> bool:
        """Move one socket read into the input BIO; False at end of connection."""
        if self._eof:
            return False
        data = await self._raw.read(READ_SIZE)
        if not data:
            self._eof = True
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def _read_into(self, view: memoryview) -> int:
        """Decrypt at least one byte into ``view``; 0 only when the connection ended."""
        while True:
            try:
                n = self._ssl.read(len(view), view)
            except ssl.SSLWantReadError:
                await self._flush()  # post-handshake messages (key updates) may want out
                if not await self._feed():
                    return 0
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0
            if n:
                return cast(int, n)
            return 0

    async def read(self, n: int | None = None) -> bytes:
        """``n`` bytes (fewer only if the connection ends); what is there if ``n`` is None."""
        if n == 0:
            return b""
        want = READ_SIZE if n is None else n
        out = bytearray(want)
        got = 0
        with memoryview(out) as view:
            while got < want:
                k = await self._read_into(view[got:])
                if k == 0 or n is None:
                    got += k
                    break
                got += k
        if not got:
            raise ConnectionClosedError("Connection closed")
        del out[got:]
        return bytes(out)

    async def write(self, data: bytes) -> None:
        """Encrypt ``data`` into TLS records and send them in one socket call."""
        with memoryview(data) as view:
            if view.nbytes:
                self._ssl.write(view)
        await self._flush()

"""TLS on the ingest's own port: ``wss://`` for clients and telephony platforms (Twilio and Exotel
connect to nothing else), ``https://`` for the page (browsers give a microphone only to a secure
origin). The certificate is picked up again when its files change (a renewal by certbot, or a
Kubernetes secret update): new connections get the new one, open ones keep theirs."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

log = logging.getLogger("ingest.tls")

RELOAD_CHECK_S = 5.0


class CertificateError(Exception):
    """The certificate or key cannot be loaded."""


class Certificates:
    """The certificate the ingest serves, swapped, never mutated: a renewal is loaded into a new
    ``SSLContext`` and becomes the one new handshakes use only once it loaded whole. The context
    given to the server (``context``) holds the first pair and hands each handshake to the current
    one from its SNI callback (OpenSSL calls it for every ClientHello, with or without SNI)."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self._stamp = self._files()
        self.current = self._load()
        self.context = self._load()
        self.context.sni_callback = self._hand_over

    def _files(self) -> tuple[int, int]:
        return os.stat(self.cert).st_mtime_ns, os.stat(self.key).st_mtime_ns

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"cannot load --tls-cert {self.cert} / --tls-key {self.key}: {exc}"
            ) from None
        return context

    def _hand_over(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self.current

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last load; True if it did. A pair that
        does not load (a renewal half written, a key that does not match) leaves the old
        certificate serving and is tried again at the next check."""
        try:
            stamp = self._files()
        except OSError as exc:
            log.warning("certificate files unreadable, keeping the loaded one: %s", exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            renewed = self._load()
        except CertificateError as exc:
            log.warning("%s; keeping the loaded one", exc)
            return False
        self.current, self._stamp = renewed, stamp
        log.info("certificate reloaded from %s", self.cert)
        return True

    async def watch(self) -> None:
        """Check the files every RELOAD_CHECK_S seconds, until cancelled."""
        while True:
            await asyncio.sleep(RELOAD_CHECK_S)
            self.reload_if_changed()

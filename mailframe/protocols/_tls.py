"""
Server certificates for STARTTLS, reloadable while the server runs.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import ssl
from twisted.logger import Logger

__all__ = ["ServerTLS", "describe_tls"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class ServerTLS:
    """
    The certificate chain and key that STARTTLS (RFC 3207) offers.

    Each session that starts TLS takes the options current at that moment,
    so :meth:`reload` (on SIGHUP) changes the certificate for new sessions
    without touching sessions already running.

    :param cert_path: a PEM file: the certificate, then any intermediate
        certificates.
    :param key_path: a PEM file with the private key; it may be the same
        file as *cert_path*.
    :raises ValueError: when the files cannot be read or do not match.
    """

    log = Logger()

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._options = self._load()

    def _load(self) -> ssl.CertificateOptions:
        try:
            certs = _read(self.cert_path)
            key = _read(self.key_path)
        except OSError as error:
            raise ValueError(f"cannot read {error.filename}: {error.strerror}") from None
        chain = _PEM_CERTIFICATE.findall(certs)
        if not chain:
            raise ValueError(f"{self.cert_path} holds no PEM certificate")
        try:
            leaf = ssl.PrivateCertificate.loadPEM(chain[0] + b"\n" + key)
            extra = [ssl.Certificate.loadPEM(pem).original for pem in chain[1:]]
            return ssl.CertificateOptions(
                privateKey=leaf.privateKey.original,
                certificate=leaf.original,
                extraCertChain=extra,
            )
        except Exception as error:
            raise ValueError(
                f"{self.cert_path} and {self.key_path} are not a usable certificate"
                f" and key: {error}"
            ) from None

    def options(self) -> ssl.CertificateOptions:
        """The options for a session starting TLS now."""
        return self._options

    def reload(self) -> bool:
        """
        Read the files again; on failure keep the certificate in use and log
        why.

        :return: whether the new certificate is in use.
        """
        try:
            self._options = self._load()
        except ValueError as error:
            self.log.error("Keeping the TLS certificate in use: {error}", error=str(error))
            return False
        self.log.info("Reloaded the TLS certificate from {path}", path=self.cert_path)
        return True


def describe_tls(transport: Any) -> str:
    """A short description of a transport's TLS session, for ``Received:``."""
    try:
        connection = transport.getHandle()
        version, cipher = connection.get_protocol_version_name(), connection.get_cipher_name()
        return f"{version} with cipher {cipher}"
    except Exception:
        return "TLS"

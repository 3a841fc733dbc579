"""TLS server contexts (RFC 5425): TLS 1.2 or newer, optional client certificates."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from kinesyslog.config import Config, ConfigError

log = logging.getLogger("kinesyslog.tls")


def make_server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A server context; raises ConfigError naming the option whose file is unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # No TLS 1.3 session tickets: syslog senders never read, and a sender that closes its
    # socket with unread tickets in it makes its kernel answer with a reset, which discards
    # whatever of its messages the relay has not read yet.
    context.num_tickets = 0
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"--cert {cert} / --key {key}: cannot load the certificate and key "
                          f"({_reason(error)}); give a PEM certificate chain and its "
                          "matching private key") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"--client-ca {client_ca}: cannot load it ({_reason(error)}); "
                              "give a PEM file of CA certificates") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    return getattr(error, "strerror", None) or str(error)


class TlsContextHolder:
    """The context new TLS connections use; SIGHUP swaps in a freshly loaded one."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.context: ssl.SSLContext | None = None
        if config.tls_ports:
            assert config.cert is not None and config.key is not None
            self.context = make_server_context(config.cert, config.key, config.client_ca)

    def reload(self) -> bool:
        """Loads the files again; on failure keeps the old context and logs one error."""
        if self.context is None:
            return False
        config = self._config
        assert config.cert is not None and config.key is not None
        try:
            self.context = make_server_context(config.cert, config.key, config.client_ca)
        except ConfigError as error:
            log.error("TLS reload failed, new connections keep the previous certificate: %s",
                      error)
            return False
        log.info("TLS certificate, key and client CA reloaded for new connections")
        return True

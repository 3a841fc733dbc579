"""TLS contexts: TLS 1.2 minimum, client CA, clear errors, reloads that keep old material."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from kinesyslog.config import Config, ConfigError
from kinesyslog.tls import TlsContextHolder, make_server_context
from tests.certs import issue, make_ca


def test_context_requires_tls12_and_client_certificates(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    server = issue(ca, tmp_path, "server")
    context = make_server_context(server.cert, server.key, ca.cert)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert make_server_context(server.cert, server.key, None).verify_mode == ssl.CERT_NONE


def test_unusable_files_name_the_option(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    server = issue(ca, tmp_path, "server")
    other = issue(ca, tmp_path, "other")
    with pytest.raises(ConfigError, match=r"^--cert .* / --key .*: cannot load"):
        make_server_context(server.cert, other.key, None)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match=r"^--client-ca .*junk.pem: cannot load"):
        make_server_context(server.cert, server.key, tmp_path / "junk.pem")


def test_failed_reload_keeps_the_previous_context(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    ca = make_ca(tmp_path, "ca")
    server = issue(ca, tmp_path, "server")
    holder = TlsContextHolder(Config(stream="s", tls_ports=(6514,), cert=server.cert,
                                     key=server.key))
    before = holder.context
    server.cert.write_text("not a certificate")
    assert holder.reload() is False
    assert holder.context is before
    assert "TLS reload failed" in caplog.text
    issue(ca, tmp_path, "server")  # new files under the same names
    assert holder.reload() is True
    assert holder.context is not before

"""`airgap serve` settings: flags over AIRGAP_SERVE_* variables over the TOML file over the
embedded defaults, and nothing unknown accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from airgap.server.config import ServeConfig, TlsMode, TlsReuse, load_config
from airgap.shared.errors import UsageError
from tests.server.conftest import start_server


def test_layers_override_in_order(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text('listen = "127.0.0.1:2001"\ntls = "off"\nidle-timeout = 30\n')
    environ = {"AIRGAP_SERVE_LISTEN": "127.0.0.1:2002", "AIRGAP_SERVE_IDLE_TIMEOUT": "40"}
    told: list[str] = []
    config = load_config(
        {"listen": "127.0.0.1:2003"}, environ=environ, config_file=toml, tell=told.append
    )
    assert config.port == 2003  # the flag
    assert config.idle_timeout == 40  # the environment, over the file
    # Found in review: the server image's ENV silently beat a file's listen on loopback. Only
    # what the environment decided is told (the flag decided listen here), and only a change.
    assert told == [
        f"airgap: warning: AIRGAP_SERVE_IDLE_TIMEOUT=40 (the environment) overrides "
        f"idle-timeout = 30 in {toml}",
    ]
    told.clear()
    environ |= {"AIRGAP_SERVE_IDLE_TIMEOUT": "030"}
    load_config({}, environ=environ, config_file=toml, tell=told.append)
    assert told == [
        f"airgap: warning: AIRGAP_SERVE_LISTEN=127.0.0.1:2002 (the environment) overrides "
        f"listen = '127.0.0.1:2001' in {toml}",
    ]
    assert config.tls == TlsMode.OFF  # the file, over the default
    assert config.max_connections == ServeConfig().max_connections  # the default
    defaults = load_config({}, environ={})
    assert (defaults.host, defaults.port) == ("127.0.0.1", 2121)
    assert defaults.root == Path("airgap-data")
    assert defaults.partial_expiry == 7 * 24 * 3600  # an abandoned upload goes after a week
    assert load_config({}, environ={"AIRGAP_SERVE_PARTIAL_EXPIRY": "0"}).partial_expiry == 0
    assert defaults.tls_reuse == TlsReuse.REQUIRED  # data connections resume the session
    toml.write_text('tls-reuse = "off"\n')
    assert load_config({}, environ={}, config_file=toml).tls_reuse == TlsReuse.OFF
    with pytest.raises(UsageError, match="bad tls-reuse 'maybe': choose required, off"):
        load_config({"tls_reuse": "maybe"}, environ={})


def test_unknown_and_malformed_settings_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text('listne = "127.0.0.1:1"\n')
    with pytest.raises(UsageError, match="unknown setting"):
        load_config({}, environ={}, config_file=toml)
    toml.write_text('trusted-signer = ["a.pub"]\n')  # the flag's name, not the setting's
    with pytest.raises(UsageError, match="unknown setting 'trusted-signer'") as refused:
        load_config({}, environ={}, config_file=toml)
    assert "trusted-signers" in (refused.value.hint or "")
    with pytest.raises(UsageError, match="bad"):
        load_config({"listen": "nowhere"}, environ={})
    with pytest.raises(UsageError, match=r"bad tls 'yes': choose required, optional, off$"):
        load_config({"tls": "yes"}, environ={})
    for limit in ("max_connections", "max_connections_per_ip", "max_sessions_per_account"):
        with pytest.raises(UsageError, match="connection limits must be at least 1"):
            load_config({limit: 0}, environ={})
    sessions = {"AIRGAP_SERVE_MAX_SESSIONS_PER_ACCOUNT": "3"}
    assert load_config({}, environ=sessions).max_sessions_per_account == 3


def test_settings_are_named_as_their_source_spells_them(tmp_path: Path) -> None:
    """Found in a walkthrough: a variable was told by its setting's name, a bad number with
    Python's words, and the file's relative paths followed the working folder."""
    with pytest.raises(UsageError, match="unknown setting 'AIRGAP_SERVE_QUOTA'") as refused:
        load_config({}, environ={"AIRGAP_SERVE_QUOTA": "5"})
    assert "QUOTA_BYTES" in (refused.value.hint or "")
    with pytest.raises(UsageError, match=r"AIRGAP_SERVE_PARTIAL_EXPIRY '1h': expected a whole"):
        load_config({}, environ={"AIRGAP_SERVE_PARTIAL_EXPIRY": "1h"})
    toml = tmp_path / "conf" / "serve.toml"
    toml.parent.mkdir()
    toml.write_text('root = "r3"\ntrusted-signers = ["keys/s.pub", "/abs/t.pub"]\n')
    config = load_config({}, environ={}, config_file=toml)
    assert config.root == tmp_path / "conf" / "r3"
    assert config.trusted_signers == (tmp_path / "conf" / "keys/s.pub", Path("/abs/t.pub"))
    assert load_config({"root": "flag"}, environ={}, config_file=toml).root == Path("flag")


def test_the_server_uses_the_file_and_the_flag_wins(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text('tls = "required"\nanonymous = "upload"\n')
    server = start_server(tmp_path / "root", "--config", str(toml), "--tls", "off")
    try:
        assert "tls=off" in server.stderr and "anonymous=upload" in server.stderr
    finally:
        server.stop()

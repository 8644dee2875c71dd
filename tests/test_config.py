from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from affinity_mw.config import OPTIONS, ConfigurationError, Settings

PEERS = "http://127.0.0.1:1,http://127.0.0.2:1"
SECRET = "config-test-secret-0123456789"


def test_options_table_in_docs_is_generated_from_options() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_config_docs.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True)
    assert result.returncode == 0, "docs/configuration.md is stale: run python scripts/gen_config_docs.py"


def test_every_option_is_a_setting_and_documented() -> None:
    assert {f.name for f in fields(Settings)} - {"extractor"} == {o.name for o in OPTIONS}
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    for option in OPTIONS:
        assert f"`{option.env}`" in doc, f"{option.env} is missing from docs/configuration.md"
        assert f"`{option.name}`" in doc, f"keyword {option.name} is missing from docs/configuration.md"
    documented = set(re.findall(r"`(AFFINITY_[A-Z_]+)`", doc))
    assert documented <= {o.env for o in OPTIONS}, (
        f"documented but not implemented: {documented - {o.env for o in OPTIONS}}"
    )


def test_defaults_with_empty_environment() -> None:
    s = Settings.load({}, {})
    assert s.peers == () and s.no_key == "local" and s.transport == "asyncio" and s.extractor is None


def test_environment_is_parsed() -> None:
    s = Settings.load(
        {},
        {
            "AFFINITY_PEERS": PEERS,
            "AFFINITY_SELF": "http://127.0.0.1:1",
            "AFFINITY_SECRET": f"old-secret-0123456789,{SECRET}",
            "AFFINITY_KEY": "header:X-Tenant,cookie:sid",
            "AFFINITY_DEBUG_HEADERS": "yes",
            "AFFINITY_CONNECT_TIMEOUT": "0.25",
            "AFFINITY_NO_KEY": "REJECT",
        },
    )
    assert s.peers == ("http://127.0.0.1:1", "http://127.0.0.2:1")
    assert s.secret == ("old-secret-0123456789", SECRET)
    assert s.debug_headers is True and s.connect_timeout == 0.25 and s.no_key == "reject"
    assert s.extractor is not None


def test_keywords_win_over_environment() -> None:
    s = Settings.load(
        {"no_key": "local", "peers": ["http://a:1"]}, {"AFFINITY_NO_KEY": "reject", "AFFINITY_PEERS": PEERS}
    )
    assert s.no_key == "local" and s.peers == ("http://a:1",)


def test_custom_callable_key() -> None:
    def key(request: object) -> str | None:
        return "k"

    assert Settings.load({"key": key}, {}).extractor is key


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.load(
            {},
            {
                "AFFINITY_PEERS": PEERS,
                "AFFINITY_CONNECT_TIMEOUT": "soon",
                "AFFINITY_DEBUG_HEADERS": "maybe",
                "AFFINITY_NO_KEY": "drop",
            },
        )
    text = str(info.value)
    for fragment in ("AFFINITY_CONNECT_TIMEOUT", "AFFINITY_DEBUG_HEADERS", "AFFINITY_NO_KEY"):
        assert fragment in text


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"peers": PEERS, "key": "header:X"}, "AFFINITY_SECRET) is required"),
        ({"peers": PEERS, "secret": SECRET}, "key source"),
        ({"peers": PEERS, "secret": "short", "key": "header:X"}, "at least 16"),
        ({"key": "telepathy:x"}, "AFFINITY_KEY"),
        ({"vnodes": 0}, "AFFINITY_VNODES"),
        ({"read_timeout": -1}, "AFFINITY_READ_TIMEOUT"),
        ({"key": 42}, "spec string or a callable"),
        ({"peerz": PEERS}, "Unknown affinity-mw option"),
    ],
)
def test_invalid_settings_are_clear(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        Settings.load(options, {})


def test_size_limits_from_environment() -> None:
    s = Settings.load({}, {"AFFINITY_MAX_BODY": "1048576", "AFFINITY_MAX_HEADER_BYTES": "8192"})
    assert (s.max_body, s.max_header_bytes) == (1048576, 8192)
    assert (Settings.load({}, {}).max_body, Settings.load({}, {}).max_header_bytes) == (0, 65536)
    with pytest.raises(ConfigurationError, match="AFFINITY_MAX_BODY"):
        Settings.load({}, {"AFFINITY_MAX_BODY": "-1"})


def test_membership_problems_are_collected_with_every_other_setting() -> None:
    """A foreign AFFINITY_SELF, a malformed or duplicated peer: one ConfigurationError that names them along with
    the other problems, so a deploy fails once with the full list."""
    env = {"AFFINITY_PEERS": PEERS, "AFFINITY_SELF": "http://127.0.0.9:1", "AFFINITY_KEY": "header:X"}
    with pytest.raises(ConfigurationError) as info:
        Settings.load({}, dict(env, AFFINITY_SECRET="short"))
    assert "is not one of the peers" in str(info.value) and "at least 16" in str(info.value)
    bad_peers = ((PEERS + ",HTTP://127.0.0.1:1/", "listed twice"), ("http://h:1/app,http://h:2", "base URL"))
    for peers, fragment in bad_peers:
        with pytest.raises(ConfigurationError, match=fragment):
            Settings.load({"peers": peers, "secret": SECRET, "key": "header:X"}, {})


@pytest.mark.parametrize("key", ["heder:X-Tenant", "header:", "jwt:tenant"])
def test_key_errors_read_cleanly(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.load({"key": key}, {})
    text = str(info.value)
    assert "AFFINITY_KEY: AFFINITY_KEY" not in text and ".." not in text and text.endswith("."), text

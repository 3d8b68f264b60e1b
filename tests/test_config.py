import tomllib
from pathlib import Path

import pytest

from kamengd.config import build_config, load_config, render_config, resolve_config_path
from kamengd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

MINIMAL = {
    "database": {"url": "sqlite:////tmp/x.db"},
    "security": {"secret_key_file": "secret_key", "data_key_file": "data.key"},
}


def test_defaults_and_relative_paths(tmp_path):
    cfg = build_config(MINIMAL, env={}, path=tmp_path / "kamengd.toml")
    assert cfg.server.bind == "127.0.0.1:8000"
    assert cfg.ratelimit.enabled is True
    assert cfg.security.data_key_file == tmp_path / "data.key"


@pytest.mark.parametrize("data, message", [
    ({**MINIMAL, "sitee": {}}, "unknown config section [sitee]"),
    ({**MINIMAL, "site": {"nmae": "x"}}, "unknown setting site.nmae"),
    ({"security": MINIMAL["security"]}, "missing setting database.url"),
    ({**MINIMAL, "server": {"workers": "two"}}, "setting server.workers: expected an integer"),
    ({**MINIMAL, "server": {"workers": 0}}, "setting server.workers: must be at least 1"),
    ({**MINIMAL, "ratelimit": {"enabled": "yes"}}, "setting ratelimit.enabled: expected true or false"),
    ({**MINIMAL, "ratelimit": {"gateway_addresses": ["203.0.113.0/24", "pay.example.com"]}},
     "setting ratelimit.gateway_addresses: 'pay.example.com' is not an address or a network"),
    ({**MINIMAL, "server": {"server": "uwsgi"}}, "setting server.server: must be one of waitress, gunicorn"),
    ({**MINIMAL, "inventory": {"max_key_length": 4097}}, "setting inventory.max_key_length: must be at most 4096"),
    ({**MINIMAL, "database": {"url": "postgresql://x/y"}}, "setting database.url: postgresql is not supported"),
    ({**MINIMAL, "database": {"url": "mysql://x/y"}}, "setting database.url: use the PyMySQL driver"),
    ({**MINIMAL, "database": {"url": "::nonsense::"}}, "setting database.url: not a database URL"),
    ({**MINIMAL, "database": {"url": "sqlite://"}}, "setting database.url: SQLite needs a file path"),
])
def test_bad_settings_are_named(data, message):
    with pytest.raises(ConfigError) as err:
        build_config(data, env={})
    assert message in err.value.message


def test_environment_overrides(tmp_path):
    env = {"KAMENGD_RATELIMIT_ENABLED": "0", "KAMENGD_SERVER_WORKERS": "4",
           "KAMENGD_SITE_NAME": "环境 shop", "KAMENGD_CONFIG": "/ignored", "KAMENGD_TEST_X": "1"}
    cfg = build_config(MINIMAL, env=env)
    assert cfg.ratelimit.enabled is False
    assert cfg.server.workers == 4
    assert cfg.site.name == "环境 shop"


def test_environment_typo_is_an_error():
    with pytest.raises(ConfigError, match="KAMENGD_RATELIMIT_ENABLE: unknown setting ratelimit.enable"):
        build_config(MINIMAL, env={"KAMENGD_RATELIMIT_ENABLE": "0"})
    with pytest.raises(ConfigError, match="KAMENGD_SERVER_WORKERS.*expected an integer"):
        build_config(MINIMAL, env={"KAMENGD_SERVER_WORKERS": "many"})


def test_secrets_are_masked_and_password_file_is_used(tmp_path):
    (tmp_path / "dbpass").write_text("s3cret-pw\n")
    data = {**MINIMAL, "database": {"url": "mysql+pymysql://shop:inline-pw@db/shop",
                                    "password_file": str(tmp_path / "dbpass")}}
    cfg = build_config(data, env={})
    assert "s3cret-pw" in cfg.database_url
    described = repr(cfg.describe())
    assert "inline-pw" not in described and "s3cret-pw" not in described


def test_config_path_resolution(tmp_path):
    assert resolve_config_path("/a.toml", env={"KAMENGD_CONFIG": "/b.toml"}) == Path("/a.toml")
    assert resolve_config_path(None, env={"KAMENGD_CONFIG": "/b.toml"}) == Path("/b.toml")
    assert resolve_config_path(None, env={}) == Path("/etc/kamengd/kamengd.toml")


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_render_round_trips():
    values = {"site": {"name": 'quote " back\\slash 中文', "url": "http://x"}, **MINIMAL}
    assert tomllib.loads(render_config(values)) == values


def test_example_config_declares_every_setting():
    """config/kamengd.example.toml is the config reference: it must stay complete and valid."""
    import dataclasses
    import typing

    from kamengd.config import Config

    example = tomllib.loads((REPO / "config" / "kamengd.example.toml").read_text())
    build_config(example, env={})
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        if section.name == "path":
            continue
        declared = {f.name for f in dataclasses.fields(hints[section.name])}
        assert set(example.get(section.name, {})) == declared, section.name


def test_relative_sqlite_path_is_taken_from_the_config_dir(tmp_path):
    cfg = build_config({**MINIMAL, "database": {"url": "sqlite:///shop.db"}}, env={},
                       path=tmp_path / "kamengd.toml")
    assert cfg.database.url == f"sqlite:///{tmp_path / 'shop.db'}"

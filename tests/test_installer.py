"""installer/install.sh, run for real under a temporary root, and the systemd units.

The installer relocates every system path under KAMENGD_ROOT, records
systemctl calls instead of making them and uses the current user as the
service user, so nothing here touches /etc, /opt, /var/lib or systemd. One
install (a real venv and `pip install` of this checkout) is shared by the
module; a second run upgrades it.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALLER = REPO / "installer" / "install.sh"
UNITS = ("kamengd.service", "kamengd-scheduler.service")
USER = pwd.getpwuid(os.getuid()).pw_name

# One install per module; with xdist, `--dist loadgroup` keeps it on one worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("installer")]


def installer_env(root: Path, systemctl: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
    env.update(KAMENGD_ROOT=str(root), KAMENGD_SKIP_PACKAGES="1", KAMENGD_SERVICE_USER=USER,
               KAMENGD_PYTHON=sys.executable, KAMENGD_SYSTEMCTL=str(systemctl or "false"))
    return env


def run_installer(root: Path, *args: str, systemctl: Path | None = None, env: dict | None = None):
    return subprocess.run(["bash", str(INSTALLER), *args], env=env or installer_env(root, systemctl),
                          cwd=root.parent, capture_output=True, text=True, timeout=600)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def unit_directives(text: str) -> dict[str, list[str]]:
    """KEY -> values, in order (systemd allows a key more than once)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@dataclass
class Install:
    root: Path
    log: Path
    stdout: str
    calls: list[str]           # systemctl calls of the first run
    modes: dict[str, int]      # path under root -> mode, right after the first run
    secrets: dict[str, bytes]  # config and key files, right after the first run

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def kamengd(self) -> Path:
        return self.path("opt/kamengd/venv/bin/kamengd")

    @property
    def config(self) -> Path:
        return self.path("etc/kamengd/kamengd.toml")

    @property
    def wrapper(self) -> Path:
        """The `kamengd` on PATH (/usr/local/bin under the prefix)."""
        return self.path("usr/local/bin/kamengd")

    def wrapper_run(self, *args: str, env: dict | None = None):
        """The wrapper as an admin runs it: no --config, no KAMENGD_* in the environment."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
        return subprocess.run([str(self.wrapper), *args], env={**base, **(env or {})},
                              capture_output=True, text=True, timeout=120)

    def kamengd_run(self, *args: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
        return subprocess.run([str(self.kamengd), "--config", str(self.config), *args], env=env,
                              capture_output=True, text=True, timeout=120)

    def venv_python(self, code: str, *args: str) -> str:
        result = subprocess.run([str(self.path("opt/kamengd/venv/bin/python")), "-c", code, *args],
                                capture_output=True, text=True, timeout=120, cwd=self.root)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def revision(self) -> str:
        return self.venv_python(
            "import sys; from kamengd.database import make_engine; from kamengd.operations.schema import current_revision;"
            "print(current_revision(make_engine(sys.argv[1], pooled=False)))", self.database_url())

    def database_url(self) -> str:
        return tomllib.loads(self.config.read_text())["database"]["url"]


SECRET_FILES = ("etc/kamengd/kamengd.toml", "var/lib/kamengd/secret_key", "var/lib/kamengd/data.key")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Install:
    base = tmp_path_factory.mktemp("installer")
    root, log, recorder = base / "root", base / "systemctl.log", base / "systemctl"
    root.mkdir()
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n')
    recorder.chmod(0o755)
    result = run_installer(root, "--yes", "--site-name", "Test shop", "--site-url", "https://shop.test",
                           systemctl=recorder)
    assert result.returncode == 0, f"install failed:\n{result.stdout}\n{result.stderr}"
    modes = {str(p.relative_to(root)): mode(p) for p in root.rglob("*")
             if "opt/kamengd/venv/" not in str(p) and not p.is_symlink()}
    return Install(root=root, log=log, stdout=result.stdout, calls=log.read_text().splitlines(),
                   modes=modes, secrets={rel: (root / rel).read_bytes() for rel in SECRET_FILES})


@dataclass
class Upgrade:
    result: subprocess.CompletedProcess
    calls: list[str]
    head: str
    revision_before: str


@pytest.fixture(scope="module")
def upgraded(installed) -> Upgrade:
    """The installer run again on the installed tree, one migration behind, asking for nginx."""
    head = installed.revision()
    installed.venv_python(
        "import sys; from alembic import command; from kamengd.database import make_engine;"
        "from kamengd.operations.schema import alembic_config\n"
        "with make_engine(sys.argv[1], foreign_keys=False, pooled=False).begin() as conn:\n"
        "    command.downgrade(alembic_config(conn), '-1')", installed.database_url())
    behind = installed.revision()
    assert behind != head
    # A link to the venv's kamengd, as an admin might have made by hand: the rerun makes it the wrapper.
    installed.wrapper.unlink()
    installed.wrapper.symlink_to(installed.kamengd)
    done = len(installed.log.read_text().splitlines())
    result = run_installer(installed.root, "--yes", "--nginx", "shop.test",
                           systemctl=installed.log.parent / "systemctl")
    assert result.returncode == 0, f"upgrade failed:\n{result.stdout}\n{result.stderr}"
    return Upgrade(result=result, calls=installed.log.read_text().splitlines()[done:],
                   head=head, revision_before=behind)


def test_install_lays_out_the_tree(installed):
    m = installed.modes
    assert m["etc/kamengd"] == 0o750
    assert m["etc/kamengd/kamengd.toml"] == 0o600
    assert m["var/lib/kamengd"] == 0o700
    for name in ("secret_key", "data.key", "kamengd.db", "initial-admin-password"):
        assert m[f"var/lib/kamengd/{name}"] == 0o600, name
    assert "var/lib/kamengd/kamengd.toml" not in m  # moved, not copied
    for unit in UNITS:
        assert m[f"etc/systemd/system/{unit}"] == 0o644
    assert not installed.path("etc/nginx").exists()  # not asked for
    for rel in ("etc/kamengd/kamengd.toml", "var/lib/kamengd", "var/lib/kamengd/data.key"):
        assert installed.path(rel).stat().st_uid == os.getuid()
    assert os.access(installed.kamengd, os.X_OK)

    config = installed.config.read_text()
    data_dir = installed.path("var/lib/kamengd")
    assert f'data_key_file = "{data_dir}/data.key"' in config
    assert f'url = "sqlite:///{data_dir}/kamengd.db"' in config
    assert 'name = "Test shop"' in config and 'url = "https://shop.test"' in config
    assert "initial-admin-password" in installed.stdout


def test_the_installed_package_is_not_editable(installed):
    location = installed.venv_python("import kamengd; print(kamengd.__file__)")
    assert location.startswith(str(installed.path("opt/kamengd/venv"))), location
    assert not list(installed.path("opt/kamengd/venv").rglob("__editable__*"))


def test_units_are_enabled_and_started(installed):
    assert installed.calls == ["daemon-reload", "enable --now kamengd.service kamengd-scheduler.service"]


def test_installed_units_are_the_repository_units_relocated(installed):
    group = grp.getgrgid(pwd.getpwnam(USER).pw_gid).gr_name
    for unit in UNITS:
        text = installed.path(f"etc/systemd/system/{unit}").read_text()
        d = unit_directives(text)
        assert d["ExecStart"][0].startswith(f"{installed.kamengd} --config {installed.config} ")
        assert d["ReadWritePaths"] == [str(installed.path("var/lib/kamengd"))]
        assert d["WorkingDirectory"] == [str(installed.path("var/lib/kamengd"))]
        assert d["User"] == [USER] and d["Group"] == [group]
        # Nothing else differs: on a real install (no prefix, user kamengd) the
        # installed unit is the repository's.
        original = text.replace(str(installed.root), "").replace(f"\nUser={USER}\n", "\nUser=kamengd\n") \
            .replace(f"\nGroup={group}\n", "\nGroup=kamengd\n")
        assert original == (REPO / "systemd" / unit).read_text()


def test_kamengd_is_on_path(installed):
    """W10 §11: README's bare `kamengd` works after the installer: a wrapper in /usr/local/bin
    runs the venv's kamengd with the installation's config."""
    wrapper = installed.wrapper
    assert wrapper.is_file() and not wrapper.is_symlink() and mode(wrapper) == 0o755
    assert f"exec '{installed.kamengd}' \"$@\"" in wrapper.read_text()
    assert "writing" in installed.stdout and str(wrapper) in installed.stdout
    result = installed.wrapper_run("product", "list", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == {"products": []}, result.stderr
    result = installed.wrapper_run("--version")
    assert result.returncode == 0 and result.stdout.startswith("kamengd")
    # --config and KAMENGD_CONFIG still choose another config, and errors stay one line.
    for args, env, name in ((["--config", "/nonexistent/a.toml"], None, "a.toml"),
                            ([], {"KAMENGD_CONFIG": "/nonexistent/b.toml"}, "b.toml")):
        result = installed.wrapper_run(*args, "product", "list", env=env)
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1 and f"/nonexistent/{name}" in result.stderr


def test_rerun_rewrites_the_wrapper(installed, upgraded):
    """The second run found a link to the venv's kamengd there (`upgraded`): now the wrapper again."""
    wrapper = installed.wrapper
    assert wrapper.is_file() and not wrapper.is_symlink() and mode(wrapper) == 0o755
    assert not wrapper.with_name("kamengd.tmp").exists()
    assert sorted(p.name for p in wrapper.parent.iterdir()) == ["kamengd"]
    result = installed.wrapper_run("product", "list", "--json")
    assert result.returncode == 0, result.stderr


def test_a_foreign_kamengd_on_path_is_kept(installed, upgraded):
    """A third run finds a `kamengd` in /usr/local/bin that is not the installer's: it stays."""
    ours = installed.wrapper.read_text()
    installed.wrapper.write_text("#!/bin/sh\necho mine\n")
    try:
        result = run_installer(installed.root, "--yes", systemctl=installed.log.parent / "systemctl")
        assert result.returncode == 0, f"rerun failed:\n{result.stdout}\n{result.stderr}"
        assert f"keeping {installed.wrapper}, which is not kamengd's wrapper" in result.stdout
        assert installed.wrapper.read_text() == "#!/bin/sh\necho mine\n"
    finally:   # the wrapper again, for the tests that run after this one
        installed.wrapper.write_text(ours)


def test_doctor_passes_but_for_the_scheduler(installed):
    result = installed.kamengd_run("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    failing = {name for name, c in checks.items() if not c["ok"]}
    assert failing <= {"scheduler"}, checks
    assert {"config file", "data key file", "database", "schema", "audit log"} <= set(checks)
    assert "ok    schema" in installed.stdout  # the installer showed doctor's report


def test_rerun_upgrades_and_keeps_config_and_keys(installed, upgraded):
    assert "upgrading" in upgraded.result.stdout
    assert "ignored" not in upgraded.result.stdout  # --nginx alone asks for no config change
    assert upgraded.calls[0] == "daemon-reload"
    stop = upgraded.calls.index("stop kamengd.service kamengd-scheduler.service")
    assert stop < upgraded.calls.index("restart kamengd.service kamengd-scheduler.service")
    assert not any(c.startswith("enable --now") for c in upgraded.calls)
    for rel, content in installed.secrets.items():
        assert installed.path(rel).read_bytes() == content, rel
    assert mode(installed.config) == 0o600
    # `kamengd upgrade` ran: the database is back at the head revision.
    assert installed.revision() == upgraded.head != upgraded.revision_before


def test_nginx_site_when_asked_for(installed, upgraded):
    site = installed.path("etc/nginx/sites-available/kamengd.conf")
    text = site.read_text()
    assert "server_name shop.test;" in text and "example.com" not in text
    assert "proxy_pass http://kamengd;" in text
    link = installed.path("etc/nginx/sites-enabled/kamengd.conf")
    assert os.readlink(link) == "../sites-available/kamengd.conf" and link.resolve() == site
    dropin = installed.path("etc/systemd/system/kamengd.service.d/nginx.conf")
    assert "Environment=KAMENGD_SERVER_PROXY_COUNT=1" in dropin.read_text().splitlines()
    assert "reload-or-restart nginx.service" in upgraded.calls
    # The site was written on the upgrade; the config asked for at install stays.
    assert 'url = "https://shop.test"' in installed.config.read_text()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_site(installed, upgraded, tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                    f"http {{ include {installed.path('etc/nginx/sites-enabled/kamengd.conf')}; }}\n")
    result = subprocess.run(["nginx", "-t", "-c", str(conf), "-p", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown option: --bogus"),
    (["--yes", "extra"], "unknown option: extra"),
    (["--nginx"], "--nginx needs a value"),
    (["--site-url", "--yes"], "--site-url needs a value"),
    (["--nginx", "shop.test;evil"], "expected a domain name"),
    (["--site-url", "ftp://shop.test", "--yes"], "expected http://"),
])
def test_bad_input_fails_in_one_line_and_creates_nothing(tmp_path, args, message):
    root = tmp_path / "root"
    root.mkdir()
    result = run_installer(root, *args)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert not list(root.iterdir())


def test_data_without_a_config_is_left_alone(tmp_path):
    root = tmp_path / "root"
    data_dir = root / "var/lib/kamengd"
    data_dir.mkdir(parents=True)
    (data_dir / "data.key").write_bytes(b"the only copy")
    result = run_installer(root, "--yes")
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1 and "is not empty" in result.stderr, result.stderr
    assert sorted(p.name for p in root.rglob("*")) == ["data.key", "kamengd", "lib", "var"]
    assert (data_dir / "data.key").read_bytes() == b"the only copy"


def test_a_relocated_install_needs_an_existing_service_user(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    env = installer_env(root)
    del env["KAMENGD_SERVICE_USER"]
    result = run_installer(root, "--yes", env=env)
    assert result.returncode != 0 and "KAMENGD_SERVICE_USER" in result.stderr
    env["KAMENGD_SERVICE_USER"] = "no-such-user-kamengd"
    result = run_installer(root, "--yes", env=env)
    assert result.returncode != 0 and "no such user" in result.stderr
    assert not list(root.iterdir())


def test_installer_script_is_valid_shell():
    subprocess.run(["bash", "-n", str(INSTALLER)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", str(INSTALLER)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


HARDENING = {
    "User": "kamengd", "Group": "kamengd", "UMask": "0077", "NoNewPrivileges": "yes",
    "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/kamengd", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
    "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes", "SystemCallArchitectures": "native", "Restart": "on-failure",
    "WorkingDirectory": "/var/lib/kamengd",
}


@pytest.mark.parametrize("unit, command", [
    ("kamengd.service", "serve --server gunicorn --no-scheduler"),
    ("kamengd-scheduler.service", "scheduler"),
])
def test_repository_units_are_hardened(unit, command):
    text = (REPO / "systemd" / unit).read_text()
    d = unit_directives(text)
    assert d["ExecStart"] == [f"/opt/kamengd/venv/bin/kamengd --config /etc/kamengd/kamengd.toml {command}"]
    for key, value in HARDENING.items():
        assert d.get(key) == [value], f"{unit}: {key}={d.get(key)}"
    assert "@system-service" in d["SystemCallFilter"]
    assert d["WantedBy"] == ["multi-user.target"]
    assert "does not exist" not in text and "arrives with" not in text  # the stale scheduler note


def systemd_analyze(*args: str, cwd: Path):
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_installed_units(installed):
    # The relocated units start the venv's real kamengd, so verify can check
    # ExecStart too (the repository's units name /opt/..., absent here).
    unit_dir = installed.path("etc/systemd/system")
    result = systemd_analyze("verify", "--man=no", *UNITS, cwd=unit_dir)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    for unit in UNITS:
        # Exposure score out of 10, times 10: "1.4 OK" passes, "MEDIUM" does not.
        result = systemd_analyze("security", "--offline=true", "--threshold=20", unit, cwd=unit_dir)
        if "--offline" in result.stderr and "unrecognized" in result.stderr:
            pytest.skip("this systemd-analyze has no security --offline")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr

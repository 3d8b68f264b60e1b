"""`pip install .` must give a working kamengd, migrations and the example config included."""
import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def declared_packages():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}


def test_every_package_is_declared():
    found = {".".join(p.relative_to(REPO).parts[:-1]) for p in (REPO / "kamengd").rglob("__init__.py")}
    found |= {"kamengd.migrations", "kamengd.migrations.versions", "kamengd.config_example"}
    assert found == declared_packages()


def test_wheel_carries_the_migrations(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True)
    wheel = next(tmp_path.glob("kamengd-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for version in (REPO / "migrations" / "versions").glob("*.py"):
        assert f"kamengd/migrations/versions/{version.name}" in names
    assert {"kamengd/migrations/env.py", "kamengd/migrations/script.py.mako"} <= names
    # `kamengd config example` prints the repository's example, shipped as package data.
    example = zipfile.ZipFile(wheel).read("kamengd/config_example/kamengd.example.toml")
    assert example == (REPO / "config" / "kamengd.example.toml").read_bytes()
    assert not any(n.startswith("kamengd/config_example/") and n.endswith(".example") for n in names)
    # The public interface's description travels with the version it describes.
    assert {f"kamengd/docs/{p.name}" for p in (REPO / "kamengd" / "docs").glob("*.md")} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kamengd = kamengd.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

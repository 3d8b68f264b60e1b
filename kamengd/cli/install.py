from __future__ import annotations

from pathlib import Path

import click

from ..errors import KamengdError
from ..operations.installation import install as do_install
from .group import cli, emit, json_option


def read_password_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KamengdError(f"cannot read password file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KamengdError(f"password file {path} is not UTF-8 text") from None
    password = text.rstrip("\r\n")
    if not password:
        raise KamengdError(f"password file {path} is empty")
    return password


@cli.command()
@click.option("--data-dir", required=True, metavar="DIR", help="Directory for config, keys and the SQLite file.")
@click.option("--database-url", metavar="URL", help="Default: SQLite at DIR/kamengd.db; or mysql+pymysql://...")
@click.option("--admin-user", default="admin", show_default=True, help="Owner account to create.")
@click.option("--admin-password-file", metavar="FILE", help="File holding the owner's password.")
@click.option("--site-name", metavar="NAME", help="The shop's name, shown to buyers (asked when not given; "
              "with --yes: kamengd).")
@click.option("--site-url", default="http://127.0.0.1:8000", show_default=True,
              help="Public base URL (payment callbacks are built from it).")
@click.option("--yes", is_flag=True, help="Do not ask; generate the owner's password if no file is given.")
@json_option
def install(data_dir, database_url, admin_user, admin_password_file, site_name, site_url, yes, as_json):
    """Create a new installation in DIR: config, keys, schema, owner account."""
    if admin_password_file:
        password = read_password_file(admin_password_file)
    elif yes:
        password = None  # generated, written to DIR/initial-admin-password
    else:
        password = click.prompt(f"Password for {admin_user}", hide_input=True, confirmation_prompt=True)
    if site_name is None:
        site_name = "kamengd" if yes else click.prompt("Shop name, shown to buyers", err=True).strip() or "kamengd"
    if not yes:
        click.confirm(f"Install kamengd into {data_dir}?", abort=True, err=True)
    result = do_install(Path(data_dir), admin_password=password, database_url=database_url,
                        admin_user=admin_user, site_name=site_name, site_url=site_url)
    payload = {"config": str(result.config_path), "admin_user": admin_user}
    if result.password_file is not None:
        payload["admin_password_file"] = str(result.password_file)
        click.echo(f"owner password for {admin_user} written to {result.password_file} (mode 0600)", err=True)
    emit(as_json, payload, str(result.config_path))

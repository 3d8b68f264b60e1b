from __future__ import annotations

import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import click

from ..errors import InvalidRequest, KamengdError
from ..extensions import db
from ..operations.processes import register
from ..operations.schema import require_current
from ..settings.services import site_url
from .group import cli


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"--bind {bind!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@cli.command()
@click.option("--bind", metavar="HOST:PORT", help="Default: server.bind (127.0.0.1:8000).")
@click.option("--server", "server_name", type=click.Choice(["waitress", "gunicorn"]))
@click.option("--workers", type=click.IntRange(min=1), help="Gunicorn worker processes.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads per process (default: server.threads for waitress, server.gunicorn_threads "
                   "for gunicorn: 1 runs sync workers).")
@click.option("--no-scheduler", is_flag=True, help="Do not run the scheduler with this server.")
@click.pass_obj
def serve(obj, bind, server_name, workers, threads, no_scheduler):
    """Run the shop, panel, API and payment callbacks."""
    config = obj.config
    host, port = parse_bind(bind or config.server.bind)
    server_name = server_name or config.server.server
    app = obj.app
    _check_address(host, port)   # before the scheduler's lease and "serving on": a busy port says so first
    with app.app_context():
        revision = require_current(db.engine)
        public = site_url(db.session, config.site.url)   # the panel's setting, else the file's
        db.session.remove()
        db.engine.dispose()  # no connection is left open in this process
    click.echo(f"kamengd serving on http://{host}:{port} ({server_name}, schema {revision})", err=True)
    mismatch = site_url_mismatch(public, host, port)
    if mismatch:
        click.echo(f"warning: {mismatch}", err=True)
    if server_name == "waitress":
        _run_waitress(app, host, port, threads or config.server.threads, scheduler=not no_scheduler)
    else:
        from ..server.gunicorn import run_gunicorn   # gunicorn loads only to serve with it

        run_gunicorn(config, f"{host}:{port}", workers or config.server.workers,
                     threads or config.server.gunicorn_threads, scheduler=not no_scheduler)


def _check_address(host: str, port: int) -> None:
    """Refuse at once, naming the address, when nothing could listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the servers do
        probe.bind((host, port))
    except OSError as exc:
        raise KamengdError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                           "(another server there? choose another with --bind HOST:PORT)") from None
    finally:
        probe.close()


def site_url_mismatch(site_url: str, host: str, port: int) -> str | None:
    """On a trial install (site.url on this machine) the pay URLs' notify_url and return_url
    must point where this server listens; say so when they do not."""
    parts = urlsplit(site_url)
    if (parts.hostname or "") not in ("127.0.0.1", "localhost", "::1"):
        return None   # behind a proxy or a public name: the proxy decides where it goes
    their_port = parts.port or (443 if parts.scheme == "https" else 80)
    if their_port == port:
        return None
    return (f"site.url is {site_url}, but this server listens on {host}:{port}: pay URLs send the "
            f"gateway's callbacks and the buyer back to {site_url}. Set site.url "
            f"(`kamengd setting set site.url http://127.0.0.1:{port}`, or the panel's settings) "
            f"or --bind 127.0.0.1:{their_port}")


def _run_waitress(app, host: str, port: int, threads: int, *, scheduler: bool) -> None:
    import waitress   # loads only to serve with it, not for every `kamengd` command

    register(app)   # restore and upgrade refuse while this process beats
    runner = None
    if scheduler:
        # One process, never forked: the scheduler's thread can share it.
        from ..scheduler.runner import Scheduler   # APScheduler loads only where the scheduler runs
        runner = Scheduler(app)
        runner.start_background()

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)   # unwind, so this server's registration is removed
    try:
        waitress.serve(app, host=host, port=port, threads=threads, ident="kamengd")
    except KeyboardInterrupt:
        pass
    finally:
        # Before the interpreter shuts the thread pools down under a tick that is
        # still being submitted; and the lease goes to another server at once.
        if runner is not None:
            runner.stop()


@cli.command()
@click.option("--once", is_flag=True, help="One tick (heartbeat and due jobs), then exit.")
@click.option("--parent-pid", type=int, hidden=True,
              help="Stop when this process (the gunicorn master that started us) is gone.")
@click.pass_obj
def scheduler(obj, once, parent_pid):
    """Run only the scheduler (one leader per database runs the jobs)."""
    from ..scheduler.runner import Scheduler   # APScheduler loads only where the scheduler runs

    app = obj.app
    with app.app_context():
        require_current(db.engine)
        db.engine.dispose()
    runner = Scheduler(app)
    if once:
        ran = runner.tick()
        click.echo(f"{'leader' if runner.is_leader else 'not leader'}; ran: {', '.join(ran) or 'nothing'}")
        return

    def stop(signum, _frame):
        runner.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if parent_pid:
        _exit_with_parent(parent_pid)
    click.echo(f"kamengd scheduler {runner.owner}: lease {runner.lease_seconds} s, tick {runner.tick_seconds} s",
               err=True)
    try:
        runner.run_forever()
    except KeyboardInterrupt:
        runner.stop()


def _exit_with_parent(parent_pid: int) -> None:
    """A master killed with SIGKILL cannot stop us: notice that we were orphaned."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="kamengd-parent-watch", daemon=True).start()

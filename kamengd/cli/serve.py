from __future__ import annotations

import click

from ..errors import InvalidRequest
from . import cli


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"--bind {bind!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@cli.command()
@click.option("--bind", metavar="HOST:PORT", help="Default: server.bind (127.0.0.1:8000).")
@click.option("--server", "server_name", type=click.Choice(["waitress", "gunicorn"]))
@click.option("--workers", type=click.IntRange(min=1), help="Gunicorn worker processes.")
@click.option("--no-scheduler", is_flag=True, help="Do not run the scheduler in this process.")
@click.pass_obj
def serve(obj, bind, server_name, workers, no_scheduler):
    """Run the shop, panel, API and payment callbacks."""
    from ..extensions import db
    from ..schema import require_current

    config = obj.config
    host, port = parse_bind(bind or config.server.bind)
    server_name = server_name or config.server.server
    app = obj.app
    with app.app_context():
        revision = require_current(db.engine)
        db.engine.dispose()  # no connection is inherited by forked workers
    click.echo(f"kamengd serving on http://{host}:{port} ({server_name}, schema {revision})", err=True)
    from ..processes import register

    register(app)   # restore and upgrade refuse while this process beats
    if server_name == "waitress":
        import signal

        import waitress

        if not no_scheduler:
            from ..scheduler.runner import Scheduler
            Scheduler(app).start_background()

        def stop(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, stop)   # unwind, so this server's registration is removed
        try:
            waitress.serve(app, host=host, port=port, threads=config.server.threads, ident="kamengd")
        except KeyboardInterrupt:
            pass
    else:
        if not no_scheduler:
            # In the master, not in each worker: one scheduler per process
            # that competes for the lease, never one per worker.
            from ..scheduler.runner import Scheduler
            Scheduler(obj.app).start_background()
        _run_gunicorn(obj, f"{host}:{port}", workers or config.server.workers, config.server.threads)


def _run_gunicorn(obj, bind: str, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    def _forget_parent_connections(_server, _worker):
        # The master's scheduler holds pooled connections; a worker must never
        # use or close them (SQLAlchemy: dispose(close=False) after a fork).
        from ..extensions import db

        with obj.app.app_context():
            db.engine.dispose(close=False)

    class Gunicorn(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("accesslog", "-")
            # The path without its query string or referer: order tokens and
            # query passwords travel there and must not reach the logs.
            self.cfg.set("access_log_format", '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss')
            self.cfg.set("proc_name", "kamengd")
            self.cfg.set("post_fork", _forget_parent_connections)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn 24+ opens a control socket under $HOME by default:
                # kamengd does not use it, and two instances would share it.
                self.cfg.set("control_socket_disable", True)

        def load(self):
            from ..app import create_app

            return create_app(obj.config)

    Gunicorn().run()


@cli.command()
@click.option("--once", is_flag=True, help="One tick (heartbeat and due jobs), then exit.")
@click.pass_obj
def scheduler(obj, once):
    """Run only the scheduler (one leader per database runs the jobs)."""
    import signal

    from ..extensions import db
    from ..schema import require_current
    from ..scheduler.runner import Scheduler

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
    click.echo(f"kamengd scheduler {runner.owner}: lease {runner.lease_seconds} s, tick {runner.tick_seconds} s",
               err=True)
    try:
        runner.run_forever()
    except KeyboardInterrupt:
        runner.stop()

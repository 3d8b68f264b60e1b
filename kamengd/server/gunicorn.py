"""`kamengd serve --server gunicorn`: the master forks workers and holds nothing else.

The master opens no database connection (serve disposed of the schema
check's before we get here) and runs no thread that would: each worker
loads its own app, registers itself as a running server and beats; the
scheduler, unless turned off, is a supervised `kamengd scheduler` child
process (kamengd.server.companion explains why it is not a thread here).
"""
from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication

from ..app import create_app
from ..config import Config
from ..operations.processes import register
from .companion import Companion, scheduler_argv

log = logging.getLogger("kamengd.server")


def run_gunicorn(config: Config, bind: str, workers: int, threads: int, *, scheduler: bool) -> None:


    companion = Companion(scheduler_argv(config.path), "scheduler") if scheduler else None

    def when_ready(_arbiter):
        if companion is not None:
            companion.start()

    def on_exit(_arbiter):
        if companion is not None:
            companion.stop()

    class Gunicorn(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            # sync by default: measured fastest here, with the shortest tails
            # (README, Performance); nginx in front absorbs slow clients.
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("timeout", config.server.gunicorn_timeout)
            self.cfg.set("accesslog", "-")
            # The path without its query string or referer: order tokens and
            # query passwords travel there and must not reach the logs.
            self.cfg.set("access_log_format", '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss')
            self.cfg.set("proc_name", "kamengd")
            self.cfg.set("when_ready", when_ready)
            self.cfg.set("on_exit", on_exit)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn 24+ opens a control socket under $HOME by default:
                # kamengd does not use it, and two instances would share it.
                self.cfg.set("control_socket_disable", True)

        def load(self):
            # In the worker, after the fork: its own app, engine and heartbeat.
            app = create_app(config)
            register(app)   # restore and upgrade refuse while this worker beats
            return app

    Gunicorn().run()

"""A child process the gunicorn master starts and keeps alive: `kamengd scheduler`.

Why not a thread in the master: the master forks every worker, and a SQLite
connection must never live across fork() (POSIX locks belong to a process,
and SQLite's bookkeeping of who holds them is copied into the child). A
scheduler thread in the master had a connection open, often mid-transaction,
whenever gunicorn forked a worker: that worker's copy of SQLite believed the
write lock was held by a connection it could never release, and every write
it tried waited out the busy timeout ("database is locked"). A fresh process
(fork + exec) inherits no such state; the master itself keeps no connection.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("kamengd.server")
RESTART_DELAYS = (1, 2, 5, 10, 30)   # seconds before each restart of a child that keeps dying
STOP_SECONDS = 20


def scheduler_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "kamengd", "--config", str(config_path), "scheduler",
            "--parent-pid", str(os.getpid())]


class Companion:
    """Runs ``argv`` and starts it again whenever it exits, until stop()."""

    def __init__(self, argv: list[str], name: str):
        self.argv, self.name = argv, name
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"kamengd-{self.name}-watch", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
                log.info("%s started (pid %s)", self.name, self._proc.pid)

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            proc = self._proc
            started = time.monotonic()
            # gunicorn's master reaps any child; then wait() answers 0 at once.
            code = proc.wait()
            if self._stopping.is_set():
                return
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1] if failures else RESTART_DELAYS[0]
            log.error("%s (pid %s) exited with %s; starting it again in %s s", self.name, proc.pid, code, delay)
            if self._stopping.wait(delay):
                return
            self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

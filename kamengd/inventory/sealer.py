"""A child process that reads a key file and seals its keys while the importing process writes.

Reading, checking, fingerprinting and encrypting a million keys takes about
as long as writing them: on a machine with two cores the two halves run side
by side. The child is a fresh interpreter (`python -m kamengd.inventory.sealer`,
never a fork of a process holding database connections), gets the open file
as an inherited descriptor and loads the data key file itself; the parent
tells it where to start and how to read, over its stdin. It answers with a
stream of pickled frames on its stdout:

    ("hello", encoding, key versions, check fingerprint)
    ("batch", SealedBatch) ...
    ("error", template, values) an ImportFileError: nothing is imported
    ("failed", exception class name)
    ("done",)

No key is ever written to stderr or named in a frame's text.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import KamengdError
from ..vault import Vault, load_vault
from .importer import ImportFileError, iter_line_blocks
from .sealing import SealedBatch, seal_blocks

CHECK_PLAINTEXT = b"kamengd/sealer-check"


class SealerFailed(KamengdError):
    code = "internal_error"
    http_status = 500


def check_fingerprint(vault: Vault, product_id: int) -> bytes:
    """Proves parent and child seal with the same data key."""
    return vault.fingerprint(product_id, CHECK_PLAINTEXT)


def _own_reader(fd: int) -> BinaryIO:
    """The file opened anew: readers side by side never move each other's offset."""
    try:
        return open(f"/proc/self/fd/{fd}", "rb")
    except OSError:   # no /proc: the inherited descriptor (the parent then starts only one reader)
        return open(fd, "rb")


def parallel_readers() -> int:
    """How many sealer processes to start: one per core, up to four (one without /proc)."""
    if not os.path.isdir("/proc/self/fd"):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def main() -> None:
    out = sys.stdout.buffer
    job = pickle.load(sys.stdin.buffer)
    try:
        vault = load_vault(job["key_file"])
        if job["version"] not in vault.versions:
            raise ImportFileError("the data key file changed while the import started; nothing imported, "
                                  "run it again")
        vault.current_version = job["version"]   # the parent's: one import writes with one version
        with _own_reader(job["fd"]) as fh:
            fh.seek(job["start"])
            encoding, blocks = iter_line_blocks(fh, job["encoding"])
            pickle.dump(("hello", encoding, vault.versions, check_fingerprint(vault, job["product_id"])),
                        out, protocol=pickle.HIGHEST_PROTOCOL)
            for batch in seal_blocks(vault, job["product_id"], blocks, max_key_length=job["max_key_length"],
                                    batch_size=job["batch_size"], share=tuple(job["share"])):
                pickle.dump(("batch", batch), out, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(("done",), out)
    except ImportFileError as exc:
        pickle.dump(("error", exc.template, exc.params), out)
    except BrokenPipeError:   # the parent gave up (its transaction failed): nothing to say
        os._exit(1)
    except BaseException as exc:   # never a traceback: it could quote a line of the file
        pickle.dump(("failed", exc.__class__.__name__), out)
    out.flush()


class SealerProcess:
    """The parent's side: start the child, then iterate its batches.

    Use as a context manager: leaving it (normally or on an error) stops the
    child, so a failed transaction never leaves a reader behind.
    """

    def __init__(self, vault: Vault, key_file, fh: BinaryIO, *, product_id: int, encoding: str | None,
                 max_key_length: int, batch_size: int, share: tuple[int, int] = (0, 1)):
        self._vault, self._product_id = vault, product_id
        fd = fh.fileno()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "kamengd.inventory.sealer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, pass_fds=(fd,), close_fds=True)
        pickle.dump({"key_file": str(key_file), "fd": fd, "start": fh.tell(), "encoding": encoding,
                     "product_id": product_id, "max_key_length": max_key_length, "batch_size": batch_size,
                     "share": share, "version": vault.current_version},
                    self._proc.stdin)
        self._proc.stdin.close()
        self.encoding = ""

    def __enter__(self) -> SealerProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.stdout.close()
        self._proc.wait()

    def _frame(self):
        try:
            return pickle.load(self._proc.stdout)
        except EOFError:
            raise SealerFailed("the import's reader stopped unexpectedly; nothing imported") from None

    def start(self) -> str:
        """Wait for the child's hello; returns the encoding it reads the file with."""
        frame = self._frame()
        if frame[0] == "error":
            raise ImportFileError(frame[1], **frame[2])
        if frame[0] != "hello":
            raise SealerFailed("the import's reader failed (%(error)s); nothing imported", error=frame[-1])
        _, self.encoding, versions, check = frame
        if versions != self._vault.versions or check != check_fingerprint(self._vault, self._product_id):
            raise SealerFailed("the data key file changed while the import started; nothing imported, "
                               "run it again")
        return self.encoding

    def batches(self) -> Iterator[SealedBatch]:
        while True:
            frame = self._frame()
            kind = frame[0]
            if kind == "batch":
                yield frame[1]
            elif kind == "done":
                return
            elif kind == "error":
                raise ImportFileError(frame[1], **frame[2])
            else:
                raise SealerFailed("the import's reader failed (%(error)s); nothing imported", error=frame[-1])


class Sealers:
    """n sealer processes reading one file, each sealing every n-th batch."""

    def __init__(self, vault: Vault, fh: BinaryIO, *, count: int, **job):
        self._procs: list[SealerProcess] = []
        try:
            for k in range(count):
                self._procs.append(SealerProcess(vault, vault.source, fh, share=(k, count), **job))
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> Sealers:
        return self

    def __exit__(self, *exc) -> None:
        for proc in self._procs:
            proc.__exit__()

    def start(self) -> str:
        return [proc.start() for proc in self._procs][0]

    def batches(self) -> Iterator[SealedBatch]:
        """Batches in file order: one from each process in turn."""
        streams = [proc.batches() for proc in self._procs]
        while streams:
            for stream in list(streams):
                batch = next(stream, None)
                if batch is None:
                    streams.remove(stream)
                else:
                    yield batch


if __name__ == "__main__":
    main()

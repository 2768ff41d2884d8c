"""Throwaway PostgreSQL and Redis servers on free loopback ports, for tests that stop and restart them.

A test never stops a server it did not start: the machine's own PostgreSQL and Redis belong to its
user. These servers live in temporary folders and go away with the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from glob import glob
from pathlib import Path

import pytest

from bench.upstream import free_port

LOOPBACK = "127.0.0.1"


def _postgres_bin(tool: str) -> str | None:
    """A PostgreSQL server binary: Debian keeps them out of PATH, under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{tool}"), key=lambda p: int(Path(p).parts[4]))
    return found[-1] if found else shutil.which(tool)


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own (trust auth, user postgres), initialised in a temporary folder."""

    def __init__(self) -> None:
        initdb, self._pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
        if initdb is None or self._pg_ctl is None:
            pytest.skip("needs PostgreSQL's server binaries (initdb, pg_ctl)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="moe-pg-"))
        # The server refuses to run as root: as root, it runs as the postgres user the package created.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")
        self._run(initdb, "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{LOOPBACK}:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses={LOOPBACK} -k {self.dir} -c fsync=off"
        self._run(self._pg_ctl, "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run(self._pg_ctl, "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedis:
    """A Redis server that keeps nothing on disk."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("needs redis-server")
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        import redis

        self._process = subprocess.Popen(
            ["redis-server", "--bind", LOOPBACK, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(host=LOOPBACK, port=self.port)
        try:
            for _ in range(100):
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}")
                time.sleep(0.05)
            raise RuntimeError("redis-server did not answer within 5 s")
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    try:
        server.start()
        yield server
    finally:
        server.stop()

"""A throwaway PostgreSQL server on loopback, for tests of the monitoring store.

    with PostgresCluster.start_new(tmp_dir) as pg:
        url = pg.new_database()        # postgresql+psycopg://charter@127.0.0.1:PORT/test_1
        pg.stop(); pg.start()          # a store outage, then recovery

Uses the server binaries of Debian's ``postgresql`` package (``initdb``, ``pg_ctl``). As root,
the server runs as the ``postgres`` system user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available() -> bool:
    return find_bin("initdb") is not None and find_bin("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self._as_postgres = os.geteuid() == 0
        self._n = itertools.count(1)

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    @classmethod
    def start_new(cls, root: Path) -> PostgresCluster:
        initdb = find_bin("initdb")
        if initdb is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # the postgres user must reach the data directory: pytest's tmp dirs are private to root
            root = Path(tempfile.mkdtemp(prefix="charter-pg-"))
            os.chmod(root, 0o755)
            shutil.chown(root, "postgres")
        c = cls(root / "pgdata", _free_port())
        c._run(initdb, "-D", str(c.data_dir), "-A", "trust", "-U", "charter", "--no-sync", "-E", "UTF8")
        c.start()
        return c

    def start(self) -> None:
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=on"
        self._run(pg_ctl, "-D", str(self.data_dir), "-o", opts, "-l", str(self.data_dir / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl
        self._run(pg_ctl, "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://charter@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database on this server; returns its SQLAlchemy URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._n)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=charter dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop("immediate")
        except Exception:
            pass
        shutil.rmtree(self.data_dir.parent if self._as_postgres else self.data_dir, ignore_errors=True)

"""A throw-away PostgreSQL server for tests, from Debian's `postgresql` package.

`postgres_server` (one per test session) runs `initdb` in a temporary folder and `pg_ctl start`
on a free loopback port (127.0.0.1 only, trust authentication, its unix socket in the same
folder), and stops the server afterwards; `pg_url` creates a fresh database per test and gives its
SQLAlchemy URL. initdb refuses to run as root, so as root the server runs as the unprivileged
`postgres` user that the package creates. The fixtures skip only when the server binaries are
absent (`scripts/postgres.sh` installs them; `.ci/run` does), and under CI=true even that fails.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DB_USER = "omnitune"


def find_pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH (most systems), else Debian's newest
    /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)], reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bin: Path
    folder: Path
    port: int
    as_user: str | None  # the OS user the server runs as (None: this process's user)
    databases: itertools.count = field(default_factory=itertools.count)

    def _run(self, *args: str, as_server_user: bool = True) -> subprocess.CompletedProcess:
        kw = {}
        if as_server_user and self.as_user:
            kw = {"user": self.as_user, "group": pwd.getpwnam(self.as_user).pw_gid, "extra_groups": []}
        out = subprocess.run(args, cwd=self.folder, capture_output=True, text=True, timeout=120, **kw)
        if out.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-3000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}\n{tail}")
        return out

    def initdb(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.folder / "data"), "-U", DB_USER, "--auth=trust",
                  "--encoding=UTF8", "--no-sync")

    def start(self) -> None:
        # fsync off: a test database need not survive a power cut.
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL (psycopg 3 is SQLAlchemy 2.1's default
        PostgreSQL driver, so the plain `postgresql://` a user types works)."""
        name = f"test{next(self.databases)}"
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, name,
                  as_server_user=False)
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{name}"


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root, and there is no `postgres` user to run initdb as "
                    "(Debian's postgresql package creates it: scripts/postgres.sh)")
    return "postgres"


@pytest.fixture(scope="session")
def postgres_server():
    pg_bin = find_pg_bin()
    if pg_bin is None:
        reason = ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                  "/usr/lib/postgresql/*/bin: run scripts/postgres.sh (apt-get install postgresql)")
        if os.environ.get("CI"):  # .ci/run installs them: their absence there is a broken set-up
            pytest.fail(reason)
        pytest.skip(reason)
    as_user = _server_user()
    # Not pytest's tmp_path: its folders are private to this user, and the server runs as postgres.
    # A short path also keeps the unix socket's path under its 107-byte limit.
    folder = Path(tempfile.mkdtemp(prefix="omnitune-pg-"))
    if as_user:
        entry = pwd.getpwnam(as_user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(pg_bin, folder, free_port(), as_user)
    try:
        server.initdb()
        for attempt in range(3):  # the free port can be taken between the probe and the start
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        yield server
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server) -> str:
    """The SQLAlchemy URL of a new, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()

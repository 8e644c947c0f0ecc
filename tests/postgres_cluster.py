"""A throwaway PostgreSQL server for the tests and benchmarks: initdb into a temp folder, 127.0.0.1, a free port.

PostgreSQL refuses to run as root: when this process is root the server runs as the `postgres` user
(Debian's package creates it) or else `nobody`, in a folder given to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "mmsent"  # the cluster's own superuser (trust authentication on 127.0.0.1 only)
# a throwaway server needs no durability: these make it start and write several times faster
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def server_binaries() -> Path | None:
    """The folder of initdb and pg_ctl: Debian's /usr/lib/postgresql/N/bin (the newest), or else on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for folder in reversed(debian):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return Path(initdb).parent if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent else None


def _server_user() -> str | None:
    """Whom the server runs as: None (this process's user) unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running throwaway server."""

    binaries: Path
    folder: Path
    port: int
    user: str | None  # the operating-system user the server runs as (None: this process's)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binaries / args[0]), *args[1:]], capture_output=True, text=True, check=False,
                              user=self.user, cwd=self.folder)

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        done = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        if done.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {done.stderr}")
        return self.url(name)

    def url(self, database: str, password: str | None = None) -> str:
        """The SQLAlchemy URL of a database; a password is accepted and ignored (trust authentication)."""
        login = f"{SUPERUSER}:{password}" if password else SUPERUSER
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def start(self) -> bool:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 {FAST}"
        done = self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.folder / "data"), "-l",
                         str(self.folder / "server.log"), "-o", options)
        return done.returncode == 0

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.folder / "data"), "-m", "immediate", "-w")


@contextmanager
def throwaway_cluster(attempts: int = 3) -> Iterator[Cluster]:
    """Start a server of its own on 127.0.0.1 (a fresh data folder, a free port); stop it and remove everything after."""
    binaries = server_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    user = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="mmsent-pg-"))
    if user is not None:
        shutil.chown(folder, user)
    cluster = Cluster(binaries, folder, _free_port(), user)
    try:
        done = cluster._run("initdb", "-D", str(folder / "data"), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                            "--locale=C", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr}")
        for _ in range(attempts):  # another program may take the free port between the choice and the start
            if cluster.start():
                break
            cluster.port = _free_port()
        else:
            raise RuntimeError(f"the PostgreSQL server did not start: {(folder / 'server.log').read_text()}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)

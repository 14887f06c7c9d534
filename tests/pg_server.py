"""A throw-away PostgreSQL server for the tests: a fresh data folder, 127.0.0.1 on a free port, password auth.

It uses the machine's PostgreSQL binaries (`initdb`, `pg_ctl`; this image ships PostgreSQL 15) and runs them as the
`postgres` user when the tests run as root (PostgreSQL refuses to run as root). Where the binaries are missing, the
PyPI package `pgserver` (it bundles them) is the fallback: `pip install pgserver`.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD, DATABASE = "qtool", "qtool-test-password", "qtool"


@dataclass
class Server:
    port: int
    root: Path  # the temporary folder: the cluster in root/db, its log, the socket
    bin: Path
    run_as: str | None

    @property
    def cluster(self) -> Path:
        return self.root / "db"

    def url(self, *, password: str = PASSWORD, database: str = DATABASE, port: int | None = None) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def stop(self) -> None:
        _run(self, "pg_ctl", "-D", str(self.cluster), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def binaries() -> Path | None:
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    if found:
        return Path(os.path.realpath(found)).parent
    try:
        import pgserver  # noqa: F401  (the fallback that bundles the binaries)
    except ImportError:
        return None
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(server: Server, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(server.bin / program), *args]
    if server.run_as:
        cmd = ["runuser", "-u", server.run_as, "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)


def start() -> Server:
    """initdb, start, and create the test role and database; the caller stops it."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL binaries: install PostgreSQL (initdb, pg_ctl) or `pip install pgserver`")
    run_as = "postgres" if os.geteuid() == 0 else None
    data = Path(tempfile.mkdtemp(prefix="qtool-pg-"))
    if run_as:
        pw = pwd.getpwnam(run_as)
        os.chown(data, pw.pw_uid, pw.pw_gid)
    server = Server(free_port(), data, bin_dir, run_as)
    pwfile = data / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    _run(server, "initdb", "-D", str(server.cluster), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
         "-E", "UTF8", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -c port={server.port} -c unix_socket_directories={data} -c fsync=off"
    _run(server, "pg_ctl", "-D", str(server.cluster), "-o", options, "-l", str(data / "log"), "-w", "start")
    subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", USER, DATABASE],
                   check=True, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": PASSWORD})
    return server


"""A throwaway PostgreSQL server on loopback for the tests of shared sweeps: the Debian packages'
binaries (`apt-get install postgresql`), a cluster in a temporary folder, one database, trust
authentication, stopped and deleted at the end. Tests that use it skip cleanly without the binaries.

PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to the `postgres` user that
the Debian package creates and its commands run through `runuser`; as anyone else they run as that
user. The folder is made with `tempfile.mkdtemp` (not pytest's tmp_path, which other users cannot
enter).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

SUPERUSER = "postgres"


def binaries() -> str | None:
    """The folder of initdb and pg_ctl (the newest installed version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("initdb")
    return os.path.dirname(on_path) if on_path else None


def _version(path: str) -> tuple[int, ...]:
    part = path.split("/")[-3]
    return tuple(int(p) for p in part.split(".") if p.isdigit())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _owner() -> str | None:
    """The user the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        return None
    return SUPERUSER


def unavailable() -> str | None:
    """Why no server can be started here (None: one can)."""
    if binaries() is None:
        return "PostgreSQL server binaries not installed (apt-get install postgresql)"
    if os.geteuid() == 0 and _owner() is None:
        return f"running as root without a '{SUPERUSER}' user to run PostgreSQL as"
    return None


@contextlib.contextmanager
def server(database: str = "sweeps") -> Iterator[str]:
    """Starts a server on 127.0.0.1 with `database` in it; yields its SQLAlchemy URL (psycopg 3)."""
    bin_dir, owner = binaries(), _owner()
    assert bin_dir is not None, unavailable()
    folder = tempfile.mkdtemp(prefix="fer_flax_pg_")
    data, port = os.path.join(folder, "data"), free_port()

    def run(*command: str) -> None:
        prefix = ["runuser", "-u", owner, "--"] if owner else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    if owner:
        shutil.chown(folder, owner)
    try:
        run(f"{bin_dir}/initdb", "-D", data, "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            f"{bin_dir}/pg_ctl",
            "-D",
            data,
            "-l",
            os.path.join(folder, "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )
        try:
            run(f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, database)
            yield f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/{database}"
        finally:
            run(f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)

"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, a free port, stopped and removed after.

`initdb` and `pg_ctl` are found through `pg_config --bindir` (Debian's `postgresql` package; .ci/run
installs it). Both refuse to run as root, so as root they run as the `postgres` user (or `nobody`)
through `runuser`, in a temp dir handed to that user. Authentication is `trust`: the URL's
password is accepted whatever it is, which lets tests check that it is never printed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile


def postgres_bindir() -> str | None:
    """The directory of `initdb` and `pg_ctl`, or None without PostgreSQL."""
    try:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return bindir if os.path.exists(os.path.join(bindir, "initdb")) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_cluster(bindir: str, user: str = "sweeper", password: str = "s3cret"):
    """Yields a `postgresql+psycopg://` URL of a fresh cluster's `postgres` database."""
    root = tempfile.mkdtemp(prefix="pg-cluster-")
    as_user = []
    if os.geteuid() == 0:
        owner = next((name for name in ("postgres", "nobody") if _exists(name)))
        entry = pwd.getpwnam(owner)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", owner, "--"]
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    pg_ctl = os.path.join(bindir, "pg_ctl")
    port = free_port()
    try:
        subprocess.run([*as_user, os.path.join(bindir, "initdb"), "-D", data, "-U", user, "-A", "trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*as_user, pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "start"], check=True,
                       capture_output=True)
        yield f"postgresql+psycopg://{user}:{password}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False

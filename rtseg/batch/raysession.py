"""Starting Ray for ``rtseg batch`` and ``rtseg features --workers``: local or a cluster.

- no address: a local Ray is started with ``num_cpus = workers x threads`` (so exactly the
  asked-for number of workers run at once, whatever the machine), no dashboard, a small object
  store, and stopped again at the end;
- ``--address``: ``auto`` (the cluster this machine belongs to), ``HOST:PORT`` (the GCS of a
  running cluster, e.g. 10.0.0.5:6379) or ``ray://HOST:PORT`` (Ray Client, port 10001). The
  port is probed first (3 s), so a wrong address is one error line, not a long hang;
- Ray already initialised in this process (tests, notebooks): used as it is, left running.

Ray's own progress bars and INFO lines are turned off; rtseg draws its own progress.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
from typing import Iterator

from rtseg.errors import UserError, first_line


LOCAL_OBJECT_STORE = 256 * 1024 * 1024  # results are small; the model travels once per worker


def import_ray():
    """``import ray`` and ``ray.data``, or UserError saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install
        raise UserError(f"this command needs Ray Data: pip install 'ray[data]' "
                        f"({type(exc).__name__}: {first_line(exc, 10**6, '')})"
                        ) from None
    return ray


def check_address(address: str) -> str:
    """Validate ``address`` and probe its port; returns it stripped. UserError if unusable."""
    a = address.strip()
    if not a:
        raise UserError("--address is empty (leave it out for a local Ray)")
    if a == "auto":
        return a
    hostport = a[len("ray://"):] if a.startswith("ray://") else a
    if "://" in hostport or hostport.count(":") != 1:
        raise UserError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    host, port_s = hostport.rsplit(":", 1)
    if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise UserError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port_s)), timeout=3.0):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {a}: {exc.strerror or exc}") from None
    return a


def _quiet() -> None:
    # Ray's notices (token authentication on, progress bars off, ...) are not the user's business
    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)


def configure_data(preserve_order: bool = False) -> None:
    """Ray Data settings rtseg relies on (call after Ray is up)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = preserve_order
    ctx.execution_options.verbose_progress = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    # one failed unit must not end the others: every unit catches its own errors; a worker
    # that dies is reported by the driver as a failure of the units it never returned
    ctx.max_errored_blocks = -1


_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _signal_handlers() -> dict:
    import signal

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {getattr(signal, n): signal.getsignal(getattr(signal, n))
            for n in _SIGNALS if hasattr(signal, n)}


def _restore_signal_handlers(saved: dict) -> None:
    """Put back the Python handlers ray.init replaced: its C++ handler aborts the process on
    SIGTERM (exit 134, a stack dump) instead of rtseg's clean stop (rtseg.shutdown)."""
    import signal

    for sig, handler in saved.items():
        if handler is not None:
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)


ORPHAN_TITLES = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")


def _proc_read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def reap_orphaned_agents() -> list[int]:
    """Stop Ray's dashboard and runtime-env agents (about 80 MB each) left by a local Ray whose
    driver was killed (SIGKILL): this user's processes with those titles whose parent is no
    longer a raylet. A live Ray's agents (their raylet runs) are never touched. Linux only
    (/proc); returns the process ids signalled."""
    import signal

    if not os.path.isdir("/proc"):
        return []
    uid, reaped = os.getuid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            title = _proc_read(f"/proc/{name}/cmdline").split(b"\0")[0].strip()
            if not title.startswith(ORPHAN_TITLES):
                continue
            stat = _proc_read(f"/proc/{name}/stat").decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parent = _proc_read(f"/proc/{ppid}/cmdline") if ppid > 1 else b""
        except (OSError, ValueError, IndexError):
            continue
        if b"raylet" in parent:
            continue
        with contextlib.suppress(OSError):
            os.kill(int(name), signal.SIGKILL)  # their SIGTERM handler waits for the raylet
            reaped.append(int(name))
    return reaped


@contextlib.contextmanager
def ray_session(workers: int, threads: int = 1, address: str | None = None) -> Iterator[dict]:
    """Ray up for the block; yields ``{"started": bool, "address": str, "cpus": float}``."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if address is not None:
        address = check_address(address)
    ray = import_ray()
    _quiet()
    started = False
    if not ray.is_initialized() and address is None:
        reap_orphaned_agents()  # those of a local Ray whose driver was SIGKILLed
    if not ray.is_initialized():
        saved = _signal_handlers()
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                      logging_level=logging.ERROR)
        try:
            if address is None:
                ray.init(num_cpus=workers * max(1, threads), object_store_memory=LOCAL_OBJECT_STORE,
                         **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; one line for the user
            msg = first_line(exc)
            where = f"connect to Ray at {address}" if address else "start a local Ray"
            raise UserError(f"cannot {where}: {msg}") from None
        started = True
        _restore_signal_handlers(saved)
    _quiet()
    configure_data()
    try:
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
    except Exception:  # noqa: BLE001
        cpus = 0.0
    try:
        yield {"started": started, "address": address or "local", "cpus": cpus}
    finally:
        if started:
            with contextlib.suppress(Exception):
                ray.shutdown()


#: the one line Ray's C++ core worker prints at ERROR level for every Ray Data actor pool that may
#: restart (Ray Data keeps its map function in the object store; rtseg wants the restarts: a
#: worker that crashes on one file must not take the next files with it)
RESTART_NOTICE = re.compile(rb"core_worker\.cc.*(max_restarts|object store)")


@contextlib.contextmanager
def without_ray_restart_notice():
    """While the block runs, the process's stderr (fd 2, where Ray's C++ code writes) goes
    through a pipe that drops :data:`RESTART_NOTICE` lines and passes every other byte on."""
    sys.stderr.flush()
    saved = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def pump() -> None:
        with os.fdopen(r, "rb", buffering=0) as fh:
            for line in iter(fh.readline, b""):
                if not RESTART_NOTICE.search(line):
                    os.write(saved, line)

    th = threading.Thread(target=pump, name="rtseg-stderr", daemon=True)
    th.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer here closes: the pump ends
        th.join(timeout=2)
        os.close(saved)

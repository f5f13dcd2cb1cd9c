"""One GPU per job on one machine: a pool of file locks, one per visible GPU.

Snakemake's ``resources: gpu=N`` only caps how many GPU jobs run at once; it gives no job a
device. A job that declares ``gpu >= 1`` (or asks for ``cuda``) leases that many GPUs here:
an exclusive ``flock`` on ``<lock dir>/<host>/gpu-<id>.lock`` per GPU, held until the job
ends (the kernel drops it when the process dies, crash or not), and ``CUDA_VISIBLE_DEVICES``
set to the leased ids before torch touches CUDA. Jobs then turn the configured device into the
one they use with :func:`job_device`; without a GPU a ``cuda`` job runs on ``cpu``.

The GPUs are ``$CIRCUITFLOW_GPU_SLOTS`` (a count, or a comma-separated list of ids) when set,
else the ids in an inherited ``CUDA_VISIBLE_DEVICES`` (a SLURM allocation), else ``nvidia-smi
-L`` (MIG instances by UUID), else ``/proc/driver/nvidia/gpus``. Locks live in
``$CIRCUITFLOW_GPU_LOCK_DIR`` (default ``.snakemake/circuitflow-gpu-slots`` in the workdir);
point several workflows at one directory to share a machine's GPUs between them.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from circuitflow.core.errors import ConfigError

SLOTS_ENV = "CIRCUITFLOW_GPU_SLOTS"
LOCK_DIR_ENV = "CIRCUITFLOW_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = ".snakemake/circuitflow-gpu-slots"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
ORDER_ENV = "CUDA_DEVICE_ORDER"
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
_current: Lease | None = None


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _nvidia_smi_ids() -> list[str]:
    """GPU indices from ``nvidia-smi -L`` (PCI bus order); a GPU split by MIG gives the UUIDs
    of its instances instead."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    ids: list[str] = []
    for line in out.splitlines():
        gpu = re.match(r"^GPU (\d+):", line)
        mig = re.search(r"\(UUID: (MIG-[^)]+)\)", line)
        if gpu:
            ids.append(gpu.group(1))
        elif mig and ids:
            if not ids[-1].startswith("MIG-"):
                ids.pop()
            ids.append(mig.group(1))
    return ids


def visible_gpus() -> tuple[list[str], str]:
    """``(ids, source)``: the GPUs this machine offers jobs (values for CUDA_VISIBLE_DEVICES)
    and where that list came from."""
    override = os.environ.get(SLOTS_ENV, "").strip()
    if override:
        if override.isdigit():
            return [str(i) for i in range(int(override))], f"{SLOTS_ENV}={override}"
        return [s.strip() for s in override.split(",") if s.strip()], f"{SLOTS_ENV}={override}"
    if VISIBLE_ENV in os.environ:
        ids = []
        for entry in (s.strip() for s in os.environ[VISIBLE_ENV].split(",")):
            if not entry or entry.startswith("-"):
                break  # CUDA ignores an invalid id and every id after it
            ids.append(entry)
        return ids, f"{VISIBLE_ENV}={os.environ[VISIBLE_ENV]}"
    ids = _nvidia_smi_ids()
    if ids:
        return ids, "nvidia-smi -L"
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        n = len(list(proc.iterdir()))
        if n:
            return [str(i) for i in range(n)], str(proc)
    return [], "no nvidia-smi, no /proc/driver/nvidia"


def lock_dir() -> Path:
    """This host's lock directory (one per host, so a shared filesystem serves a cluster)."""
    root = Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    return root / re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())


def _lock_file(directory: Path, gpu_id: str) -> Path:
    return directory / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', gpu_id)}.lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}\n".encode())
    return fd


@dataclass
class Lease:
    """The GPUs one job holds: ``slots`` index into ``pool`` (every visible id), ``ids`` are
    what CUDA_VISIBLE_DEVICES gets. ``ids == ()`` with ``wanted > 0``: no GPU, run on cpu."""

    wanted: int
    requested: str | None
    pool: tuple[str, ...] = ()
    slots: tuple[int, ...] = ()
    source: str = ""
    _fds: list[int] = field(default_factory=list, repr=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, repr=False)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.pool[s] for s in self.slots)

    def device(self, requested: str | None) -> str | None:
        """The torch device a job configured for ``requested`` runs on under this lease:
        ``cpu`` stays ``cpu``; ``cuda`` / ``cuda:N`` become ``cuda:N`` among the leased GPUs
        (N past them, or no index, is ``cuda:0``), or ``cpu`` when the job holds none."""
        if requested is None:
            return None
        match = _CUDA.match(requested)
        if match is None:
            return requested
        if not self.slots:
            return "cpu"
        index = int(match.group(1) or 0)
        return f"cuda:{index if index < len(self.slots) else 0}"

    def record(self) -> dict:
        """What a manifest's ``device`` field says about this job."""
        return {
            "requested": self.requested,
            "used": self.device(self.requested),
            "slot": self.slots[0] if len(self.slots) == 1 else (list(self.slots) or None),
            VISIBLE_ENV: os.environ.get(VISIBLE_ENV),
            "host": socket.gethostname(),
        }


def gpus_wanted(gpu_resource, requested: str | None) -> int:
    """How many GPUs a job leases: its ``gpu`` resource, or 1 when it asks for cuda without one."""
    try:
        n = int(gpu_resource or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"resources gpu={gpu_resource!r}: not a whole number of GPUs") from None
    if n == 0 and requested is not None and _CUDA.match(requested):
        return 1
    return max(n, 0)


def acquire(
    wanted: int,
    requested: str | None = None,
    *,
    poll_s: float = 0.2,
    timeout_s: float | None = None,
    log: Callable[[str], None] = _log,
) -> Lease:
    """Lease ``wanted`` GPUs (all or none, waiting while others hold them) and point
    CUDA_VISIBLE_DEVICES at them; call before torch initialises CUDA."""
    lease = Lease(wanted, requested)
    if wanted <= 0:
        return lease
    pool, lease.source = visible_gpus()
    lease.pool = tuple(pool)
    if not pool:
        log(
            f"circuitflow devices: no GPU visible ({lease.source}; set {SLOTS_ENV} to override); "
            f"this job configured for {requested or 'a GPU'} runs on cpu"
        )
        return lease
    if wanted > len(pool):
        raise ConfigError(
            f"resources gpu={wanted}: this host offers {len(pool)} GPU(s) ({lease.source}); "
            f"lower the rule's gpu resource or set {SLOTS_ENV}"
        )
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    start, waiting = time.monotonic(), False
    while True:
        for slot, gpu_id in enumerate(pool):
            fd = _try_lock(_lock_file(directory, gpu_id))
            if fd is not None:
                lease.slots += (slot,)
                lease._fds.append(fd)
                if len(lease.slots) == wanted:
                    break
        if len(lease.slots) == wanted:
            break
        _unlock(lease)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {wanted} free GPU(s) of {pool} after {timeout_s} s")
        if not waiting:
            log(f"circuitflow devices: waiting for {wanted} free GPU(s) of {pool} ({directory})")
            waiting = True
        time.sleep(poll_s)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        log(f"circuitflow devices: CUDA was initialised before the lease; {VISIBLE_ENV} is ignored")
    for name in (VISIBLE_ENV, ORDER_ENV):
        lease._saved_env[name] = os.environ.get(name)
    os.environ[VISIBLE_ENV] = ",".join(lease.ids)
    if lease.source in ("nvidia-smi -L", "/proc/driver/nvidia/gpus"):
        os.environ[ORDER_ENV] = "PCI_BUS_ID"  # ids numbered as nvidia-smi numbers them
    log(
        f"circuitflow devices: {requested or 'job'} -> {lease.device(requested) or 'cuda'}, "
        f"{VISIBLE_ENV}={os.environ[VISIBLE_ENV]} (slot {','.join(map(str, lease.slots))} "
        f"of {len(pool)}, {lease.source})"
    )
    return lease


def _unlock(lease: Lease) -> None:
    for fd in lease._fds:
        os.close(fd)  # closing the only descriptor drops the flock
    lease._fds.clear()
    lease.slots = ()


def release(lease: Lease) -> None:
    """Give the GPUs back and restore the environment the job started with."""
    _unlock(lease)
    for name, value in lease._saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    lease._saved_env.clear()


@contextmanager
def leased(wanted: int, requested: str | None = None, **kwargs) -> Iterator[Lease]:
    """``acquire`` for the duration of a block; :func:`job_device` answers from this lease."""
    global _current
    lease = acquire(wanted, requested, **kwargs)
    previous, _current = _current, lease
    try:
        yield lease
    finally:
        _current = previous
        release(lease)


def current() -> Lease | None:
    """The lease of the running job, if any."""
    return _current


def job_device(requested: str | None) -> str | None:
    """The device a job configured for ``requested`` uses: its leased GPU, ``cpu`` where no
    GPU exists, or ``requested`` unchanged outside a lease (the library called directly)."""
    return requested if _current is None else _current.device(requested)

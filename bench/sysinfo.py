"""What every result carries about the machine, and the memory probes (RSS, GPU, bandwidth)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gsv_runtime.info import backend_devices, cpu_info

_PACKAGES = ("numpy", "onnxruntime", "openvino", "torch")


def _versions() -> dict[str, str]:
    from gsv_runtime import __version__

    found = {"gsv-rt": __version__}
    for module in _PACKAGES:
        with contextlib.suppress(ImportError):
            found[module] = str(__import__(module).__version__)
    return found


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where that is unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def gpu_info() -> list[dict[str, str]]:
    """NVIDIA GPUs as ``nvidia-smi`` reports them (name, driver, memory); [] without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def machine_info(label: str | None = None) -> dict[str, Any]:
    """The ``gsv info`` facts plus GPU, OS and versions, recorded with every result.

    Args:
        label: a name for this machine in merged reports (default: CPU model, or the GPU's).
    """
    cpu = cpu_info()
    gpus = gpu_info()
    info: dict[str, Any] = {
        "cpu": {**cpu, "physical_cores": physical_cores()},
        "gpu": gpus,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(),
        "backends": backend_devices(),
    }
    ident = f"{platform.node()}|{cpu['model']}|{[g['name'] for g in gpus]}"
    info["machine_id"] = hashlib.sha256(ident.encode()).hexdigest()[:12]
    info["label"] = label or _default_label(cpu, gpus)
    return info


def _default_label(cpu: dict[str, Any], gpus: list[dict[str, str]]) -> str:
    model = str(cpu.get("model", "cpu"))
    for noise in ("(R)", "(TM)", "CPU", "Processor"):
        model = model.replace(noise, "")
    model = " ".join(model.split()).split("@")[0].strip()
    name = f"{model}, {cpu.get('logical_cores')} threads"
    return f"{name} + {gpus[0]['name']}" if gpus else name


# --------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB since the last :func:`reset_peak_rss`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        return None


class GpuMemorySampler:
    """Polls ``nvidia-smi`` for this process's GPU memory; ``peak_mb`` is None without one."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._exe = shutil.which("nvidia-smi")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> float | None:
        assert self._exe is not None
        try:
            out = subprocess.run(
                [self._exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        used = 0.0
        for line in out.strip().splitlines():
            pid, _, mem = (p.strip() for p in line.partition(","))
            if pid == str(os.getpid()):
                with contextlib.suppress(ValueError):
                    used += float(mem.split()[0])
        return used

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            used = self._sample()
            if used is not None:
                self.peak_mb = max(self.peak_mb or 0.0, used)

    def __enter__(self) -> GpuMemorySampler:
        if self._exe is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            used = self._sample()
            if used is not None:
                self.peak_mb = max(self.peak_mb or 0.0, used)


def memory_bandwidth_gbps(
    threads: int = 1, size_mb: int = 256, repeats: int = 5, seconds: float = 0.5
) -> float:
    """Host read bandwidth in GB/s (1e9 B/s), measured now with a numpy read loop.

    ``threads`` workers each sum their own slice of a ``size_mb`` buffer (numpy releases the
    GIL in reductions, so the reads run in parallel); the best of ``repeats`` passes (or as many
    as fit in ``seconds``) counts. The buffer is far larger than any last-level cache, so this
    is the DRAM bandwidth the GPT step's weight reads compete for.
    """
    threads = max(1, threads)
    buf = np.ones(size_mb * (1 << 20) // 8, dtype=np.float64)
    parts = np.array_split(buf, threads)
    best = 0.0
    deadline = time.perf_counter() + seconds
    with ThreadPoolExecutor(threads) as pool:
        for i in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.add.reduce, parts))
            elapsed = time.perf_counter() - t0
            best = max(best, buf.nbytes / elapsed / 1e9)
            if i and time.perf_counter() > deadline:
                break
    return best


def gpt_step_bytes(
    t2s: dict[str, Any], weight_bytes: float, batch: float, context: float, kv_bytes: float
) -> float:
    """Bytes one GPT decode step must read: its weights once, plus every row's KV cache.

    Weights: per layer Q/K/V and output projections (4·d²) and the feed-forward pair
    (2·d·4d), plus the d × vocab head; the one embedding and position row read per token is
    negligible. KV: 2 (K and V) × layers × rows × attended slots × d.

    Args:
        t2s: the bundle's ``t2s`` block (n_layer, d_model, vocab_size).
        weight_bytes: bytes per weight as the backend holds them (4 fp32, 2 bf16/fp16, 1 int8).
        batch: rows in the step (mean over the steps measured).
        context: attended KV slots per row (mean over the steps measured).
        kv_bytes: bytes per cached value (4 fp32, 2 fp16/bf16).
    """
    layers, d, vocab = int(t2s["n_layer"]), int(t2s["d_model"]), int(t2s["vocab_size"])
    weights = (layers * 12 * d * d + d * vocab) * weight_bytes
    kv = 2 * layers * batch * context * d * kv_bytes
    return float(weights + kv)


def _cpu_jiffies() -> tuple[float, float] | None:
    """(busy, steal) seconds of all CPUs since boot, from /proc/stat; None where unreadable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    v = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq) / hz, steal / hz


class HostLoad:
    """How many cores *other* processes kept busy while the block ran (noise on the figures).

    Busy CPU time of the whole machine minus this process's and its waited-for children's.
    ``other_cores`` is None where /proc/stat is unreadable.
    """

    def __init__(self) -> None:
        self.other_cores: float | None = None
        self.steal_cores: float | None = None

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> HostLoad:
        self._start = (time.perf_counter(), self._own(), _cpu_jiffies())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, own0, jiffies0 = self._start
        jiffies1 = _cpu_jiffies()
        wall = time.perf_counter() - wall0
        if jiffies0 is None or jiffies1 is None or wall <= 0:
            return
        busy = jiffies1[0] - jiffies0[0]
        own = self._own() - own0
        self.other_cores = max(0.0, (busy - own) / wall)
        self.steal_cores = max(0.0, (jiffies1[1] - jiffies0[1]) / wall)

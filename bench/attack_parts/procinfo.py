"""What bench/attack.py reads of the bot process from outside it, in /proc (proc(5)): its
resident memory, its open files and limit, and which sockets it holds (UDP media ports, TCP
connections on a listening port)."""

from __future__ import annotations

import ipaddress
import os
import time
from collections import Counter
from pathlib import Path

# /proc/net/tcp's st column (include/net/tcp_states.h)
TCP_STATES = {
    "01": "established",
    "02": "syn_sent",
    "03": "syn_recv",
    "04": "fin_wait1",
    "05": "fin_wait2",
    "06": "time_wait",
    "07": "close",
    "08": "close_wait",
    "09": "last_ack",
    "0A": "listen",
    "0B": "closing",
}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process (proc(5) /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat's first line (idle and iowait are
    not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


class CpuWindow:
    """The bot's CPU (100 % = one core) and the machine's (100 % = every core busy) from
    start() to stop(): a loaded machine shows here, not as the bot's fault."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._t0 = self._cpu0 = 0.0
        self._busy0 = self._total0 = 0

    def start(self) -> None:
        self._t0, self._cpu0 = time.monotonic(), cpu_seconds(self.pid)
        self._busy0, self._total0 = machine_busy()

    def stop(self) -> dict[str, float]:
        span = max(1e-6, time.monotonic() - self._t0)
        busy, total = machine_busy()
        return {
            "bot_cpu_percent": round(100 * (cpu_seconds(self.pid) - self._cpu0) / span, 1),
            "machine_busy_percent": round(
                100 * (busy - self._busy0) / max(1, total - self._total0), 1
            ),
        }


def rss_mb(pid: int) -> float:
    """VmRSS of the process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS in /proc/{pid}/status")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid: int) -> int:
    """The process's soft RLIMIT_NOFILE ("Max open files" in /proc/PID/limits)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise ValueError(f"no Max open files in /proc/{pid}/limits")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _rows(pid: int, table: str) -> list[list[str]]:
    rows = []
    for name in (table, table + "6"):
        path = Path(f"/proc/{pid}/net/{name}")
        if path.exists():
            rows += [line.split() for line in path.read_text().splitlines()[1:]]
    return rows


def _address(field: str) -> tuple[str, int]:
    """/proc/net/udp's local_address: the address as 32-bit words in host (little-endian on
    the machines this runs on) order, in hex, then the port in hex."""
    text, port = field.rsplit(":", 1)
    raw = b"".join(bytes.fromhex(text[i : i + 8])[::-1] for i in range(0, len(text), 8))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def udp_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the UDP sockets the process holds (its ICE host candidates)."""
    inodes = _socket_inodes(pid)
    return sorted({_address(row[1]) for row in _rows(pid, "udp") if row[9] in inodes})


def tcp_on_port(pid: int, port: int) -> dict[str, int]:
    """The process's TCP sockets whose local port is `port` (a listener's connections), by
    state; the listening socket itself is left out."""
    inodes = _socket_inodes(pid)
    states: Counter[str] = Counter()
    for row in _rows(pid, "tcp"):
        if row[9] in inodes and int(row[1].rsplit(":", 1)[1], 16) == port and row[3] != "0A":
            states[TCP_STATES.get(row[3], row[3])] += 1
    return dict(states)

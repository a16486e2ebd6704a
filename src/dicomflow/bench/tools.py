"""Finding the reference programs (never installing them) and describing the machine.

DCMTK's tools are found by asking each candidate for its version: pynetdicom installs
``storescu``/``storescp``/``findscu`` scripts of its own that may come first on PATH (in a
virtualenv or with pyenv), and those are not the reference. Orthanc is found as ``Orthanc``
(Debian installs it in /usr/sbin) or ``orthanc``.
"""

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dicomflow import __version__

INSTALL_HINTS = {
    "dcmtk": "apt-get install dcmtk",
    "orthanc": "apt-get install orthanc (the bench runs its own instance; stop the service)",
}
_EXTRA_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/usr/local/sbin", "/opt/orthanc/bin")


@dataclass(frozen=True)
class Tool:
    name: str
    path: str
    version: str


def _candidates(names: tuple[str, ...]) -> list[str]:
    dirs = os.environ.get("PATH", "").split(os.pathsep) + list(_EXTRA_DIRS)
    seen: set[str] = set()
    out: list[str] = []
    for directory in dirs:
        for name in names:
            path = os.path.join(directory, name)
            real = os.path.realpath(path)
            if real in seen or not os.access(path, os.X_OK) or not os.path.isfile(path):
                continue
            seen.add(real)
            out.append(path)
    return out


def _version_output(path: str) -> str:
    try:
        result = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout + result.stderr


def parse_dcmtk_version(text: str) -> str | None:
    """``$dcmtk: storescu v3.6.7 2022-04-22 $`` -> ``3.6.7``; None if not DCMTK."""
    match = re.search(r"\$dcmtk: \S+ v(\d+\.\d+\.\d+)", text)
    return match.group(1) if match else None


def parse_orthanc_version(text: str) -> str | None:
    """``/usr/sbin/Orthanc 1.10.1`` (argv[0], then the version) -> ``1.10.1``."""
    match = re.search(r"^\S*[Oo]rthanc\s+(\d+\.\d+\.\d+)", text, re.MULTILINE)
    return match.group(1) if match else None


def find_dcmtk(name: str) -> Tool | None:
    """The DCMTK program `name` (storescu, storescp, findscu), skipping look-alikes."""
    for path in _candidates((name,)):
        version = parse_dcmtk_version(_version_output(path))
        if version:
            return Tool(name, path, version)
    return None


def find_orthanc() -> Tool | None:
    for path in _candidates(("Orthanc", "orthanc")):
        version = parse_orthanc_version(_version_output(path))
        if version:
            return Tool("orthanc", path, version)
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def filesystem_of(path: Path) -> str:
    """The filesystem type and device holding `path` (from /proc/mounts)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    target = str(path.resolve())
    best: list[str] = []
    for fields in mounts:
        if len(fields) < 3:
            continue
        inside = target == fields[1] or target.startswith(fields[1].rstrip("/") + "/")
        if inside and (not best or len(fields[1]) > len(best[1])):
            best = fields
    return f"{best[2]} on {best[0]} ({best[1]})" if best else "unknown"


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def describe_machine(work_dir: Path) -> dict[str, object]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "hostname": platform.node(),
        "os": _os_release(),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "memory_bytes": _memory_bytes(),
        "filesystem": filesystem_of(work_dir),
        "load_average_at_start": [round(v, 2) for v in load],
        "python": sys.version.split()[0],
    }


def versions(tools: dict[str, Tool | None]) -> dict[str, str]:
    out = {
        "dicomflow": __version__,
        "pydicom": _package_version("pydicom"),
        "pynetdicom": _package_version("pynetdicom"),
    }
    for name, tool in tools.items():
        out[name] = f"{tool.version} ({tool.path})" if tool else "not found"
    return out

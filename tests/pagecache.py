"""How much of a file the OS page cache holds (mincore(2) of a shared read-only mapping)."""

import ctypes
import ctypes.util
import mmap
import os
import sys
from pathlib import Path

import pytest

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_pages(path: Path) -> int:
    """Pages of `path` in the page cache (mapping a file does not read it)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vector = ctypes.create_string_buffer(pages)
            if _libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(byte & 1 for byte in vector.raw)
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def require_droppable_pages(folder: Path) -> None:
    """Skip unless this file system drops a durable file's pages on POSIX_FADV_DONTNEED.

    Linux on disk file systems does; tmpfs keeps them (its pages are the file), and other
    systems may not have posix_fadvise at all.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise page cache control here")
    probe = folder / ".pagecache-probe"
    probe.write_bytes(b"x" * 3 * mmap.PAGESIZE)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.read(fd, 3 * mmap.PAGESIZE)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    dropped = resident_pages(probe) == 0
    probe.unlink()
    if not dropped:
        pytest.skip(f"the file system of {folder} keeps pages on POSIX_FADV_DONTNEED (tmpfs?)")

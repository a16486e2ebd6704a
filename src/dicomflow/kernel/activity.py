"""When the receivers of one data directory last made an object durable.

The processes of `dicomflow serve` share one machine's cores. While objects arrive, the
processors that are not on the search path (de-identification, plugins) hold back, so that a
burst of C-STOREs gets the cores, and catch up once it ends (`processors.runtime.Deferral`).
They learn that objects are arriving from this signal: the time of the last receive, kept in
an 8-byte file under the data directory and mapped into memory, so that marking it costs the
acknowledgement path no system call. Processes on other machines (a scale-out deployment)
never see it change, and never hold back: they do not share the receivers' cores.
"""

import contextlib
import math
import mmap
import os
import struct
import time
from pathlib import Path

from dicomflow.kernel.settings import Settings

_FORMAT = "<d"  # seconds since the epoch; 8 aligned bytes are written in one store
_SIZE = struct.calcsize(_FORMAT)
FILE_NAME = "receiving"


class ReceiveActivity:
    """The time of the last receive, shared through a memory-mapped file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)  # zeros: "never"
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)

    def mark(self) -> None:
        """Note that an object was received now."""
        struct.pack_into(_FORMAT, self._map, 0, time.time())

    def idle_seconds(self) -> float:
        """Seconds since the last receive on this machine; infinite if there was none.

        A time in the future (a clock set back, or a copied data directory) counts as none:
        a stale mark must not hold the background processors back.
        """
        last = float(struct.unpack_from(_FORMAT, self._map, 0)[0])
        now = time.time()
        if not math.isfinite(last) or last <= 0 or last > now + 1:
            return math.inf
        return max(0.0, now - last)

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()


def open_receive_activity(settings: Settings) -> ReceiveActivity:
    return ReceiveActivity(settings.data_dir / FILE_NAME)

"""The receive activity signal shared by the processes of one data directory."""

import math
import struct
import subprocess
import sys
import time
from pathlib import Path

from dicomflow.kernel.activity import FILE_NAME, ReceiveActivity, open_receive_activity
from dicomflow.kernel.settings import Settings


def test_never_marked_is_idle_forever(tmp_path: Path) -> None:
    activity = ReceiveActivity(tmp_path / "data" / FILE_NAME)
    assert activity.idle_seconds() == math.inf


def test_a_mark_is_seen_through_another_mapping_of_the_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    writer, reader = open_receive_activity(settings), open_receive_activity(settings)
    writer.mark()
    assert reader.idle_seconds() < 1.0
    time.sleep(0.2)
    assert 0.15 < reader.idle_seconds() < 5.0
    writer.close()
    reader.close()


def test_a_mark_from_another_process_is_seen(tmp_path: Path) -> None:
    activity = ReceiveActivity(tmp_path / FILE_NAME)
    code = (
        "import sys; from pathlib import Path; "
        "from dicomflow.kernel.activity import ReceiveActivity; "
        "ReceiveActivity(Path(sys.argv[1])).mark()"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / FILE_NAME)], check=True)
    assert activity.idle_seconds() < 5.0


def test_a_mark_in_the_future_or_garbage_does_not_count(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    activity = ReceiveActivity(path)
    for stale in (time.time() + 3600, math.nan, -1.0):
        path.write_bytes(struct.pack("<d", stale))
        assert activity.idle_seconds() == math.inf

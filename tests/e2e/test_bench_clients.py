"""The bench's storescu command lines, run by DCMTK's storescu against DCMTK's storescp.

A flat folder is passed file by file (in instance order) and a tree is scanned (``+sd +r``
after the peer's address): both forms must reach the peer whole, as must the sustained
phase's form, which makes new UIDs as it sends.
"""

import subprocess
from pathlib import Path

import pytest

from dicomflow.bench.clients import send_folders, storescu_command
from dicomflow.bench.data import (
    CASES,
    Template,
    flat_identities,
    tree_identities,
    write_flat,
    write_tree,
)
from dicomflow.bench.tools import Tool
from tests.e2e.conftest import dcmtk

pytestmark = pytest.mark.e2e


def test_a_listed_flat_folder_and_a_scanned_tree_are_sent_whole(
    tmp_path: Path, storescp: tuple[Path, int]
) -> None:
    received, port = storescp
    before = len(list(received.iterdir()))
    template = Template(CASES["tiny"])
    flat = [tmp_path / "flat0", tmp_path / "flat1"]
    write_flat(template, 1, flat, flat_identities(30))
    tree = tmp_path / "tree"
    tree_files = write_tree(template, 2, tree, tree_identities(0, 3, 2, 4), groups=1)
    storescu = Tool("storescu", dcmtk("storescu"), "")
    result = send_folders(
        storescu, port, "STORESCP", [*flat, tree / "g0"], True, tmp_path / "logs", timeout=120
    )
    assert result.ok, result.returncodes
    assert len(list(received.iterdir())) - before == 30 + tree_files


def test_the_sustained_phase_command_sends_new_objects_each_time(
    tmp_path: Path, storescp: tuple[Path, int]
) -> None:
    received, port = storescp
    before = len(list(received.iterdir()))
    folder = tmp_path / "flat"
    write_flat(Template(CASES["tiny"]), 1, [folder], flat_identities(6))
    storescu = Tool("storescu", dcmtk("storescu"), "")
    command = storescu_command(
        storescu, "STORESCP", port, ["+sd", "+r", str(folder)], options=("+IS", "2", "+IR", "50")
    )
    for _ in range(2):
        subprocess.run(command, check=True, timeout=60, capture_output=True)
    # The second pass is new instances, not overwrites of the first.
    assert len(list(received.iterdir())) - before == 12

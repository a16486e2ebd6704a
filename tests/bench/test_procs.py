"""The bench's process sampling: peaks of every process of a tree, each labelled once."""

import os

from dicomflow.bench import procs


def test_the_sampler_labels_each_process_once_and_keeps_its_peak() -> None:
    calls: list[int] = []

    def label(pid: int) -> str:
        calls.append(pid)
        return "bench"

    sampler = procs.RssSampler(lambda: [os.getpid()], label, interval=60)
    with sampler:
        for _ in range(3):
            sampler._sample()
    assert calls == [os.getpid()]  # not at every sample: a label scans /proc
    figures = sampler.result.to_json()
    [entry] = figures["processes"]
    assert entry["pid"] == os.getpid() and entry["role"] == "bench"
    assert entry["peak_bytes"] > 0

"""How `dicomflow serve` lays the receivers and processors out over processes."""

from pathlib import Path

from dicomflow.kernel.settings import Settings
from dicomflow.roles import (
    _ingest_children,
    _processor_children,
    background_processors,
    build_runners,
    selected_processor_names,
)


def _layout(tmp_path: Path, **values: object) -> list[tuple[str, int]]:
    settings = Settings(data_dir=tmp_path, plugins="-", **values)
    children = _processor_children(settings, selected_processor_names(settings))
    return [(child.role, child.nice) for child in children]


def test_the_search_path_runs_apart_from_the_background_processors(tmp_path: Path) -> None:
    assert _layout(tmp_path) == [
        ("processor:storage", 0),
        ("processor:index", 0),
        ("processor:metadata", 0),
        ("processor:deidentify", 19),
    ]


def test_the_metadata_path_alone_has_no_background_process(tmp_path: Path) -> None:
    assert _layout(tmp_path, processors="storage,metadata,index") == [
        ("processor:storage", 0),
        ("processor:index", 0),
        ("processor:metadata", 0),
    ]


def test_one_process_for_all_when_asked_or_when_there_is_nothing_to_split(
    tmp_path: Path,
) -> None:
    assert _layout(tmp_path, search_processors="") == [("processors", 0)]
    assert _layout(tmp_path, processors="deidentify") == [("processors", 0)]
    assert _layout(tmp_path, search_processors="storage,metadata,index", background_nice=5) == [
        ("processor:storage,metadata,index", 0),
        ("processor:deidentify", 5),
    ]


def test_receivers_share_the_port_when_several_and_take_the_ingest_niceness(
    tmp_path: Path,
) -> None:
    def layout(**values: object) -> list[tuple[str, bool, int]]:
        settings = Settings(data_dir=tmp_path, **values)
        return [(c.role, c.reuse_port, c.nice) for c in _ingest_children(settings)]

    assert layout() == [("ingest", False, 10)]
    assert layout(ingest_nice=0) == [("ingest", False, 0)]
    assert layout(dicom_workers=2, ingest_nice=4) == [("ingest", True, 4)] * 2


def test_only_the_background_processors_hold_back_while_objects_arrive(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, plugins="-")
    deferred = {
        runner.processor.name: runner.deferral is not None
        for runner in build_runners(settings, defer_background=True)
    }
    assert deferred == {"storage": False, "index": False, "metadata": False, "deidentify": True}
    assert not any(r.deferral for r in build_runners(settings))  # drain, reindex: never
    never = Settings(data_dir=tmp_path, plugins="-", background_defer_seconds=0)
    assert not any(r.deferral for r in build_runners(never, defer_background=True))
    one_process = Settings(data_dir=tmp_path, plugins="-", search_processors="")
    assert not any(r.deferral for r in build_runners(one_process, defer_background=True))
    assert background_processors(settings, ["storage", "deidentify", "routing"]) == [
        "deidentify",
        "routing",
    ]


def test_every_runner_lingers_as_configured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, plugins="-")
    assert {runner.linger for runner in build_runners(settings)} == {0.05}
    never = Settings(data_dir=tmp_path, plugins="-", processor_linger_ms=0)
    assert {runner.linger for runner in build_runners(never)} == {0.0}

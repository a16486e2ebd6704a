"""deploy/kibana/dicomflow.ndjson: valid saved objects, on fields the index really maps."""

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("elasticsearch")

from dicomflow.indexer.elasticsearch import index_names, mappings
from dicomflow.indexer.levels import Level
from dicomflow.kernel.events import Namespace

NDJSON = Path(__file__).parents[2] / "deploy" / "kibana" / "dicomflow.ndjson"


def saved_objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in NDJSON.read_text().splitlines() if line.strip()]


def mapped_fields(properties: dict[str, Any], prefix: str = "") -> set[str]:
    fields = set()
    for name, spec in properties.items():
        fields.add(prefix + name)
        fields |= mapped_fields(spec.get("properties", {}), f"{prefix}{name}.")
    return fields


def test_the_data_view_is_the_instances_index_by_received_time() -> None:
    (view,) = [o for o in saved_objects() if o["type"] == "index-pattern"]
    assert (
        view["attributes"]["title"] == index_names("dicomflow", Namespace.ORIGINAL)[Level.INSTANCE]
    )
    assert view["attributes"]["timeFieldName"] == "@timestamp"


def test_lens_panels_use_mapped_fields_and_the_dashboard_references_them() -> None:
    objects = saved_objects()
    ids = {(o["type"], o["id"]) for o in objects}
    fields = mapped_fields(mappings()["properties"]) | {"___records___"}
    lenses = [o for o in objects if o["type"] == "lens"]
    assert {o["attributes"]["title"] for o in lenses} >= {
        "Studies per day",
        "Modality mix",
        "Ingest rate",
        "Top sending AE titles",
    }
    for lens in lenses:
        for layer in lens["attributes"]["state"]["datasourceStates"]["formBased"][
            "layers"
        ].values():
            for column in layer["columns"].values():
                assert column["sourceField"] in fields, (lens["id"], column["sourceField"])
        for reference in lens["references"]:
            assert (reference["type"], reference["id"]) in ids
    (dashboard,) = [o for o in objects if o["type"] == "dashboard"]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    references = {r["name"]: r for r in dashboard["references"]}
    assert len(panels) == len(lenses)
    for panel in panels:
        reference = references[panel["panelRefName"]]
        assert (reference["type"], reference["id"]) in ids

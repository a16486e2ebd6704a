"""The scale-out deployment end to end on real Apache Kafka, Elasticsearch and an S3 server.

DCMTK storescu -> SCP (kafka config) -> Kafka -> processors as separate OS processes ->
Elasticsearch documents, S3 originals and anonymised copies; QIDO-RS and /api/search answer
from Elasticsearch. Then: replay into an emptied index, outages, and replicas.
"""

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomflow.indexer import open_index
from dicomflow.kernel.backends import open_blob_store
from dicomflow.kernel.events import Namespace
from dicomflow.processors.runtime import group_name
from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance, write_tree
from tests.conftest import free_port
from tests.e2e.conftest import dataset_bytes, dcmtk, parse_multipart, read_dataset
from tests.e2e.ledger import OUT_OF_RESOURCES, SUCCESS, Ledger, Sender, audit
from tests.integration.conftest import ScaleOut, services_script

pytestmark = pytest.mark.integration


def storescu(deployment: ScaleOut, folder: Path) -> None:
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "-aec",
            "DICOMFLOW",
            "+sd",
            "+r",
            "-nh",
            "127.0.0.1",
            str(deployment.dicom_port),
            str(folder),
        ],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def blob_count(deployment: ScaleOut, namespace: Namespace) -> int:
    store = open_blob_store(deployment.settings())
    return sum(1 for _ in store.keys(namespace))


def test_storescu_to_kafka_elasticsearch_s3_and_replay(scaleout: ScaleOut, tmp_path: Path) -> None:
    files = write_tree(
        iter_study_tree(patients=2, series_per_study=2, instances_per_series=10), tmp_path / "s"
    )
    scaleout.start_all()
    storescu(scaleout, tmp_path / "s")
    status = scaleout.wait_idle(len(files))
    topics = status["topics"]
    assert isinstance(topics, dict)
    assert topics[f"{scaleout.env['DICOMFLOW_TOPIC_PREFIX']}.received"] == len(files)

    studies = scaleout.http.get("/dicomweb/studies").json()
    assert len(studies) == 2
    assert sorted(s["00201208"]["Value"][0] for s in studies) == [20, 20]
    found = scaleout.http.get("/api/search", params={"q": "PatientName:doe*"}).json()
    assert found["total"] == 1
    # C-FIND answers from Elasticsearch too (DCMTK findscu, study root, study level).
    find = subprocess.run(
        [
            dcmtk("findscu"),
            "-S",
            "-aec",
            "DICOMFLOW",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientName=DOE*",
            "-k",
            "StudyInstanceUID",
            "-k",
            "NumberOfStudyRelatedInstances",
            "127.0.0.1",
            str(scaleout.dicom_port),
        ],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert find.returncode == 0, find.stdout + find.stderr
    answers = (find.stdout + find.stderr).count("Find Response:")
    assert answers >= 1 and "(0020,000d)" in (find.stdout + find.stderr).lower()

    sent = read_dataset(files[0].read_bytes())
    response = scaleout.http.get(
        f"/dicomweb/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}"
        f"/instances/{sent.SOPInstanceUID}"
    )
    assert response.status_code == 200
    [part] = parse_multipart(response)
    assert dataset_bytes(part) == dataset_bytes(files[0].read_bytes())
    assert blob_count(scaleout, Namespace.ORIGINAL) == len(files)
    assert blob_count(scaleout, Namespace.DEIDENTIFIED) == len(files)

    # Replay: empty the index, then a new indexer group rebuilds it from the earliest offset.
    scaleout.stop("index")
    index = open_index(scaleout.settings())
    for namespace in (Namespace.ORIGINAL, Namespace.DEIDENTIFIED):
        index.clear(namespace)
    assert index.counts(Namespace.ORIGINAL)[index_level("instance")] == 0
    prefix = scaleout.env["DICOMFLOW_TOPIC_PREFIX"]
    scaleout.start("index", "processor:index", "--group", f"{prefix}.index-rebuild")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rebuilt = [index.counts(ns)[index_level("instance")] for ns in Namespace if ns != "spool"]
        # A batch's instances become visible before its studies are recounted and refreshed
        # (ElasticsearchStudyIndex.upsert): wait for both, then check both.
        studies = index.counts(Namespace.ORIGINAL)[index_level("study")]
        if rebuilt == [len(files), len(files)] and studies == 2:
            break
        time.sleep(0.5)
    assert index.counts(Namespace.ORIGINAL)[index_level("instance")] == len(files)
    assert index.counts(Namespace.DEIDENTIFIED)[index_level("instance")] == len(files)
    assert index.counts(Namespace.ORIGINAL)[index_level("study")] == 2
    index.close()


def index_level(name: str):  # type: ignore[no-untyped-def]
    from dicomflow.indexer.levels import Level

    return Level(name)


def send_through_an_outage(
    deployment: ScaleOut,
    service: str,
    ongoing: list[Path],
    during: list[Path],
    in_outage: Callable[[], None] = lambda: None,
    seconds: float = 30,
) -> Ledger:
    """Ingest before, across and during an outage of `service` (stopped, then restarted).

    `ongoing` is being sent when the service stops, `during` is sent once it is down.
    """
    before = Sender(deployment.dicom_port, ongoing, associations=4).start()
    before.wait_for(lambda ledger: len(ledger.statuses) >= 10)
    services_script("stop", service)
    try:
        outage_started = time.monotonic()
        within = Sender(deployment.dicom_port, during, associations=4).start()
        in_outage()
        time.sleep(max(0.0, seconds - (time.monotonic() - outage_started)))
    finally:
        services_script("start", service)
    return Ledger.merged(before.join(), within.join())


def _outage_trees(folder: Path) -> tuple[list[Path], list[Path]]:
    ongoing = write_tree(
        iter_study_tree(patients=2, series_per_study=1, instances_per_series=50, seed="ongoing"),
        folder / "a",
    )
    during = write_tree(
        iter_study_tree(patients=1, series_per_study=1, instances_per_series=60, seed="outage"),
        folder / "b",
    )
    return ongoing, during


# The outage, the catch-up and wait_idle's own limit fit in the timeout, so that a pipeline that
# does not catch up fails with wait_idle's diagnosis (status, the roles' logs), not a bare timeout.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("service", ["elasticsearch", "s3"])
def test_an_outage_loses_nothing_and_the_pipeline_catches_up(
    scaleout: ScaleOut, tmp_path: Path, service: str
) -> None:
    ongoing, during = _outage_trees(tmp_path)
    scaleout.start_all()
    # Ingest goes on: acknowledgements need only the spool and Kafka.
    ledger = send_through_an_outage(scaleout, service, ongoing, during)
    assert ledger.acknowledged == set(ledger.sent), ledger.why
    status = scaleout.wait_idle(len(ongoing) + len(during), timeout=300)
    print(f"{service} outage of 30 s, caught up: {status}")
    audit(scaleout.http, ledger).check(f"{service} outage", ledger)
    assert blob_count(scaleout, Namespace.ORIGINAL) == len(ongoing) + len(during)


def _store(port: int, ds: Dataset) -> int:
    ae = AE(ae_title="OUTAGE")
    ae.add_requested_context(CTImageStorage)
    ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMFLOW")
    assert assoc.is_established
    try:
        status: int = assoc.send_c_store(ds).Status
    finally:
        assoc.release()
    return status


@pytest.mark.timeout(600)
def test_kafka_down_means_a_failure_status_never_a_false_success(
    scaleout: ScaleOut, tmp_path: Path
) -> None:
    ongoing, during = _outage_trees(tmp_path)
    scaleout.start_all()
    assert _store(scaleout.dicom_port, make_instance(PatientSpec(), 0, 0, 0)) == 0x0000

    def refused_while_down() -> None:
        assert _store(scaleout.dicom_port, make_instance(PatientSpec(), 0, 0, 1)) == 0xA700

    first = send_through_an_outage(scaleout, "kafka", ongoing, during, refused_while_down)
    deadline = time.monotonic() + 120
    status = -1
    while time.monotonic() < deadline:
        status = _store(scaleout.dicom_port, make_instance(PatientSpec(), 0, 0, 2))
        if status == 0x0000:
            break
        time.sleep(2)
    assert status == 0x0000
    # Every store got Success or Out of Resources; the refused ones succeed when sent again.
    assert set(first.statuses.values()) <= {SUCCESS, OUT_OF_RESOURCES}, first.why
    refused = [first.sent[sop].path for sop in first.with_status(OUT_OF_RESOURCES)]
    again = Sender(scaleout.dicom_port, refused, associations=4).start().join()
    assert again.acknowledged == set(again.sent), again.why
    ledger = Ledger.merged(first, again)
    print(f"kafka outage: {len(refused)} refused with 0xA700, then sent again")
    scaleout.wait_idle(2 + len(ongoing) + len(during), timeout=300)
    audit(scaleout.http, ledger).check("kafka outage, refused ones sent again", ledger)


def _wait_until_groups_have_members(
    scaleout: ScaleOut, processors: tuple[str, ...], members: int, timeout: float = 120
) -> None:
    """Wait until each processor's consumer group is stable with `members` members that
    hold partitions (the Kafka admin API's view of the group)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": scaleout.env["DICOMFLOW_KAFKA_BOOTSTRAP"]})
    groups = [group_name(scaleout.env["DICOMFLOW_TOPIC_PREFIX"], name) for name in processors]
    deadline = time.monotonic() + timeout
    seen: dict[str, object] = {}
    while time.monotonic() < deadline:
        for group, future in admin.describe_consumer_groups(groups).items():
            try:
                described = future.result()
            except Exception as exc:  # not created yet: the replicas are still starting
                seen[group] = exc
                continue
            holding = [m for m in described.members if m.assignment.topic_partitions]
            seen[group] = (described.state, len(holding))
        if all(seen.get(g) == (ConsumerGroupState.STABLE, members) for g in groups):
            return
        time.sleep(0.5)
    raise AssertionError(f"consumer groups not rebalanced over {members} replicas: {seen}")


def test_two_replicas_share_the_work_without_duplicates(scaleout: ScaleOut, tmp_path: Path) -> None:
    files = write_tree(
        iter_study_tree(patients=8, series_per_study=1, instances_per_series=5), tmp_path / "s"
    )
    scaleout.start_all()
    for name in ("metadata", "deidentify"):
        scaleout.start(f"{name}-2", f"processor:{name}")
    # Both replicas must hold partitions before the objects come: a fixed 3 s wait was too
    # short on a loaded machine (one replica took all 40 records, the other joined after).
    _wait_until_groups_have_members(scaleout, ("metadata", "deidentify"), members=2)
    storescu(scaleout, tmp_path / "s")
    scaleout.wait_idle(len(files))
    for namespace in (Namespace.ORIGINAL, Namespace.DEIDENTIFIED):
        found = scaleout.http.get(
            "/api/search", params={"level": "instance", "namespace": namespace.value}
        ).json()
        assert found["total"] == len(files)
        assert blob_count(scaleout, namespace) == len(files)
    # Both replicas of each processor did part of the work (the partitions were shared).
    for name in ("metadata", "deidentify"):
        counts = []
        for replica in (name, f"{name}-2"):
            scaleout.stop(replica)
            match = re.search(r"stopped after processing (\d+) records", scaleout.log(replica))
            assert match, scaleout.log(replica)
            counts.append(int(match.group(1)))
        print(f"{name} records per replica: {counts}")
        assert all(count > 0 for count in counts), counts


def test_a_token_created_through_one_api_replica_is_accepted_by_the_other(
    scaleout: ScaleOut,
) -> None:
    """Two API replicas share the token registry (in S3): create on one, use on the other,
    revoke on the other, refused on the first within the registry's cache time."""
    other_port = free_port()
    scaleout.start("api", "api")
    scaleout.start("api-2", "api", env={"DICOMFLOW_HTTP_PORT": str(other_port)})
    first, second = scaleout.http, scaleout.client(other_port)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if first.get("/healthz").status_code == second.get("/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    created = first.post("/api/admin/tokens", json={"name": "replica test", "roles": ["uploader"]})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    uploader = scaleout.client(other_port, token)
    assert uploader.get("/api/status").status_code == 200
    assert uploader.get("/dicomweb/deidentified/studies").status_code == 403
    assert second.delete(f"/api/admin/tokens/{created.json()['id']}").status_code == 204
    deadline = time.monotonic() + 30  # the first replica's cache keeps a record for 5 s
    refused = scaleout.client(scaleout.http_port, token)
    while refused.get("/api/status").status_code != 401:
        assert time.monotonic() < deadline, "the revocation did not reach the other replica"
        time.sleep(0.5)

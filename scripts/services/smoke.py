#!/usr/bin/env python3
"""Round-trip smoke check of the services started by scripts/services.sh.

usage:
    python scripts/services/smoke.py [all|kafka|elasticsearch|s3] ...
    python scripts/services/smoke.py write-markers   # leave one record in each service
    python scripts/services/smoke.py check-markers   # ...and check it survived a restart

Reads the DICOMFLOW_* variables from the environment, or from <repo>/.services.env
when they are not set.  Needs: confluent-kafka, elasticsearch (major 8, matching the
8.19 server), minio.  Exits non-zero on the first failure.
"""

from __future__ import annotations

import io
import os
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = "dicomflow-smoke-marker"


def load_env() -> None:
    env_file = Path(os.environ.get("DICOMFLOW_SERVICES_ENV_FILE", REPO / ".services.env"))
    if not env_file.is_file():
        return
    for line in env_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, _, value = line.partition("=")
        os.environ.setdefault(key.strip(), value.strip().strip("'\""))


def env(name: str) -> str:
    try:
        return os.environ[name]
    except KeyError:
        sys.exit(f"smoke: {name} is not set (run scripts/services.sh up first)")


# --------------------------------------------------------------------------- kafka
def kafka_roundtrip(
    topic: str | None = None, payload: bytes | None = None, consume_only: bool = False
) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = env("DICOMFLOW_KAFKA_BOOTSTRAP")
    topic = topic or f"dicomflow-smoke-{uuid.uuid4().hex[:8]}"
    payload = payload or f"hello {uuid.uuid4()}".encode()
    if not consume_only:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        fut = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic]
        try:
            fut.result(timeout=30)
        except Exception as exc:  # already exists is fine for markers
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        errors: list = []
        producer.produce(
            topic,
            key=b"k",
            value=payload,
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
        left = producer.flush(30)
        assert left == 0 and not errors, f"kafka: produce failed: {errors or left}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dicomflow-smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                raise RuntimeError(f"kafka: consume error {msg.error()}")
            if msg.value() == payload:
                consumer.commit(message=msg, asynchronous=False)
                print(f"kafka: ok  topic={topic} offset={msg.offset()} ({bootstrap})")
                return
        raise RuntimeError(f"kafka: message not consumed from {topic} within 60 s")
    finally:
        consumer.close()


# --------------------------------------------------------------------------- elasticsearch
def es_client():
    from elasticsearch import Elasticsearch

    return Elasticsearch(env("DICOMFLOW_ELASTICSEARCH_URL"), request_timeout=30)


def es_roundtrip() -> None:
    es = es_client()
    info = es.info()
    index = f"dicomflow-smoke-{uuid.uuid4().hex[:8]}"
    doc = {"PatientID": "SMOKE-1", "StudyDescription": "CT chest smoke test", "Modality": "CT"}
    es.indices.create(
        index=index,
        mappings={
            "properties": {
                "PatientID": {"type": "keyword"},
                "Modality": {"type": "keyword"},
                "StudyDescription": {"type": "text"},
            }
        },
    )
    es.index(index=index, id="1", document=doc, refresh="wait_for")
    hits = es.search(index=index, query={"match": {"StudyDescription": "chest"}})["hits"]
    assert hits["total"]["value"] == 1 and hits["hits"][0]["_source"] == doc, hits
    es.indices.delete(index=index)
    print(
        f"elasticsearch: ok  server={info['version']['number']} index+search+delete ({env('DICOMFLOW_ELASTICSEARCH_URL')})"
    )


# --------------------------------------------------------------------------- s3
def s3_client():
    from minio import Minio

    return Minio(
        env("DICOMFLOW_S3_ENDPOINT"),
        access_key=env("DICOMFLOW_S3_ACCESS_KEY"),
        secret_key=env("DICOMFLOW_S3_SECRET_KEY"),
        secure=env("DICOMFLOW_S3_SECURE").lower() == "true",
        region=os.environ.get("DICOMFLOW_S3_REGION", "us-east-1"),
    )


def s3_roundtrip() -> None:
    s3 = s3_client()
    bucket = f"dicomflow-smoke-{uuid.uuid4().hex[:8]}"
    data = os.urandom(3 * 1024 * 1024 + 17)
    s3.make_bucket(bucket)
    s3.put_object(
        bucket,
        "studies/1.2.3/instance.dcm",
        io.BytesIO(data),
        len(data),
        content_type="application/dicom",
        metadata={"x-amz-meta-sop": "1.2.3"},
    )
    resp = s3.get_object(bucket, "studies/1.2.3/instance.dcm")
    try:
        got = resp.read()
    finally:
        resp.close()
        resp.release_conn()
    assert got == data, "s3: object content differs"
    stat = s3.stat_object(bucket, "studies/1.2.3/instance.dcm")
    assert stat.size == len(data) and stat.content_type == "application/dicom", stat
    names = [o.object_name for o in s3.list_objects(bucket, recursive=True)]
    assert names == ["studies/1.2.3/instance.dcm"], names
    s3.remove_object(bucket, "studies/1.2.3/instance.dcm")
    s3.remove_bucket(bucket)
    print(f"s3: ok  put+get+stat+list+delete {len(data)} bytes ({env('DICOMFLOW_S3_ENDPOINT')})")


# --------------------------------------------------------------------------- persistence markers
def write_markers() -> None:
    kafka_roundtrip(topic=MARKER, payload=MARKER.encode())
    es = es_client()
    es.index(index=MARKER, id="1", document={"marker": MARKER}, refresh="wait_for")
    s3 = s3_client()
    if not s3.bucket_exists(MARKER):
        s3.make_bucket(MARKER)
    s3.put_object(MARKER, "marker.txt", io.BytesIO(MARKER.encode()), len(MARKER))
    print("markers: written")


def check_markers() -> None:
    kafka_roundtrip(topic=MARKER, payload=MARKER.encode(), consume_only=True)
    doc = es_client().get(index=MARKER, id="1")
    assert doc["_source"] == {"marker": MARKER}, doc
    print("elasticsearch: marker document still there")
    resp = s3_client().get_object(MARKER, "marker.txt")
    try:
        assert resp.read() == MARKER.encode()
    finally:
        resp.close()
        resp.release_conn()
    print("s3: marker object still there")


def main(argv: list[str]) -> int:
    load_env()
    what = argv or ["all"]
    actions = {
        "kafka": kafka_roundtrip,
        "elasticsearch": es_roundtrip,
        "es": es_roundtrip,
        "s3": s3_roundtrip,
        "write-markers": write_markers,
        "check-markers": check_markers,
    }
    for item in what:
        if item == "all":
            kafka_roundtrip()
            es_roundtrip()
            s3_roundtrip()
        elif item in actions:
            actions[item]()
        else:
            print(__doc__)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

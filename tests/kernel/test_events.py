"""Event payloads: what is written, and what earlier versions wrote, decode the same."""

import pytest

from dicomflow.kernel.events import DeadLetter, decode_event, encode_event

_LETTER = {
    "group": "storage",
    "topic": "dicomflow.received",
    "partition": 0,
    "offset": 7,
    "key": "1.2.3",
    "error_type": "PoisonEvent",
    "reason": "not an ObjectReceived event",
}


@pytest.mark.parametrize("payload", [b'{"type": "object.received"}', b"\xff\xfe\x00binary", b""])
def test_a_dead_letter_holds_any_payload(payload: bytes) -> None:
    letter = DeadLetter(payload=payload, **_LETTER)
    decoded = decode_event(encode_event(letter), DeadLetter)
    assert decoded == letter and decoded.payload == payload and decoded.schema_version == 2


def test_a_version_1_dead_letter_is_read_with_its_payload_as_text() -> None:
    written = (
        b'{"schema_version":1,"event_id":"e1","type":"dead.letter","group":"storage",'
        b'"topic":"dicomflow.received","partition":0,"offset":7,"key":"1.2.3",'
        b'"payload":"{\\"type\\": \\"object.received\\", \\"name\\": \\"\\u00e9?/+\\"}",'
        b'"error_type":"PoisonEvent","reason":"r","failed_at":"2026-11-01T10:00:00Z"}'
    )
    letter = decode_event(written, DeadLetter)
    assert letter.schema_version == 1
    assert letter.payload == '{"type": "object.received", "name": "\u00e9?/+"}'.encode()


def test_an_event_is_written_as_its_model_serialises_it() -> None:
    # encode_event takes the serializer's bytes directly: the same bytes as the documented
    # model_dump_json, model settings (base64 payloads) and non-ASCII text included.
    letter = DeadLetter(payload=b"\xff\x00", **{**_LETTER, "reason": "caf\u00e9 \u2603"})
    assert encode_event(letter) == letter.model_dump_json().encode()

"""De-identification per DICOM PS3.15 Annex E (Basic Profile), with keyed-hash pseudonyms.

`dicomflow.processors.deidentify` is the processor that applies it to every stored original;
docs/deidentification.md describes the behaviour and the choices made.
"""

from dicomflow.processors.deid.engine import (
    DeidentifiedInstance,
    deidentify,
    deidentify_bytes,
    deidentify_in_place,
    patient_key_of,
)
from dicomflow.processors.deid.exceptions import DeidentificationError
from dicomflow.processors.deid.profile import (
    Action,
    DeidentificationMethodCode,
    DeidentifyOptions,
    basic_profile_action,
)
from dicomflow.processors.deid.pseudonyms import (
    accession_pseudonym,
    date_shift_days,
    patient_pseudonym_id,
    patient_pseudonym_name,
    pseudonymous_uid,
)

__all__ = [
    "Action",
    "DeidentificationError",
    "DeidentificationMethodCode",
    "DeidentifiedInstance",
    "DeidentifyOptions",
    "accession_pseudonym",
    "basic_profile_action",
    "date_shift_days",
    "deidentify",
    "deidentify_bytes",
    "deidentify_in_place",
    "patient_key_of",
    "patient_pseudonym_id",
    "patient_pseudonym_name",
    "pseudonymous_uid",
]

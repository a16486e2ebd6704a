"""Keyed-hash pseudonyms: the same input and secret give the same output, everywhere, always.

Every pseudonym is an HMAC-SHA256 under the one de-identification secret. Inputs of different
kinds are kept apart by a domain prefix (``patient``, ``accession``, ``date-offset``); UIDs are
hashed as they are, which cannot collide with the prefixed forms since a UID holds only digits
and dots. Without the secret a pseudonym can neither be reversed nor recomputed from a guess.
"""

import hashlib
import hmac
from functools import lru_cache

from dicomflow.kernel.uids import UID_MAX_LENGTH, validate_uid

DEFAULT_UID_ROOT = "2.25"
# Fewest decimal digits a pseudonymous UID must keep below its root (about 80 bits): a longer
# root would make collisions between different original UIDs plausible.
MIN_UID_DIGITS = 24
MAX_UID_ROOT_LENGTH = UID_MAX_LENGTH - 1 - MIN_UID_DIGITS
ID_HEX_CHARS = 16
PATIENT_NAME_FAMILY = "ANON"
MIN_DATE_SHIFT_DAYS = 365
MAX_DATE_SHIFT_DAYS = 3650


def secret_bytes(secret: bytes | str) -> bytes:
    """The HMAC key of a secret; refuses an empty one."""
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the de-identification secret is empty: set DICOMFLOW_DEID_SECRET")
    return key


def _digest(secret: bytes | str, message: str) -> bytes:
    return hmac.new(secret_bytes(secret), message.encode(), hashlib.sha256).digest()


@lru_cache(maxsize=64)
def uid_digits_under(root: str) -> int:
    """How many decimal digits a pseudonymous UID may have below `root` (validated)."""
    validate_uid(root, "de-identification UID root")
    if len(root) > MAX_UID_ROOT_LENGTH:
        raise ValueError(
            f"de-identification UID root {root!r} is {len(root)} characters long; at most "
            f"{MAX_UID_ROOT_LENGTH} leave room for {MIN_UID_DIGITS} hash digits in 64 characters"
        )
    return UID_MAX_LENGTH - len(root) - 1


def pseudonymous_uid(uid: str, secret: bytes | str, root: str = DEFAULT_UID_ROOT) -> str:
    """The pseudonym of `uid`: ``<root>.<first 128 bits of HMAC-SHA256(secret, uid)>``.

    With the default root ``2.25`` this is a UUID-derived UID (PS3.5 B.2) of at most 44
    characters. Under a longer root the integer is reduced modulo a power of ten so that the
    result never exceeds 64 characters.
    """
    room = uid_digits_under(root)
    value = int.from_bytes(_digest(secret, uid.strip().rstrip("\0"))[:16], "big")
    if len(str(value)) > room:
        value %= 10**room
    return f"{root}.{value}"


def pseudonymous_id(value: str, secret: bytes | str, domain: str) -> str:
    """A 16-character uppercase hex pseudonym of an identifier within a `domain`."""
    return _digest(secret, f"{domain}\0{value.strip()}").hex()[:ID_HEX_CHARS].upper()


def patient_pseudonym_id(patient_key: str, secret: bytes | str) -> str:
    """The pseudonymous PatientID of a patient (same patient key, same pseudonym)."""
    return pseudonymous_id(patient_key, secret, "patient")


def patient_pseudonym_name(patient_key: str, secret: bytes | str) -> str:
    """The pseudonymous PatientName: ``ANON^<pseudonymous PatientID>``."""
    return f"{PATIENT_NAME_FAMILY}^{patient_pseudonym_id(patient_key, secret)}"


def accession_pseudonym(accession_number: str, secret: bytes | str) -> str:
    """The pseudonymous AccessionNumber (16 characters, the SH maximum)."""
    return pseudonymous_id(accession_number, secret, "accession")


def date_shift_days(patient_key: str, secret: bytes | str) -> int:
    """How many days a patient's dates move back: 365 to 3650, fixed per patient and secret."""
    span = MAX_DATE_SHIFT_DAYS - MIN_DATE_SHIFT_DAYS + 1
    digest = _digest(secret, f"date-offset\0{patient_key}")
    return MIN_DATE_SHIFT_DAYS + int.from_bytes(digest[:8], "big") % span

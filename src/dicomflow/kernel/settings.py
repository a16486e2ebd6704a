"""Settings of every dicomflow role, read in one place.

Values come, highest priority first, from: keyword arguments, environment variables prefixed
``DICOMFLOW_``, a TOML file (``DICOMFLOW_CONFIG``, else ``./dicomflow.toml`` if present), then the
defaults below. Every field is documented in the README's configuration table (a test checks it).
"""

import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PLACEHOLDER_SECRET = "change-me"  # noqa: S105 - the marker a real deployment must replace


class BusBackend(StrEnum):
    EMBEDDED = "embedded"
    KAFKA = "kafka"


class IndexBackend(StrEnum):
    EMBEDDED = "embedded"
    ELASTICSEARCH = "elasticsearch"


class BlobBackend(StrEnum):
    FILESYSTEM = "filesystem"
    S3 = "s3"


def _config_file() -> Path | None:
    explicit = os.environ.get("DICOMFLOW_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("dicomflow.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Configuration of dicomflow (all roles). Environment variables: DICOMFLOW_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="DICOMFLOW_", extra="ignore")

    dev_mode: bool = Field(
        False,
        description="Development mode: allows placeholder secrets in a scale-out deployment "
        "(and the other dev-only settings). Never in production.",
    )
    data_dir: Path = Field(
        Path("dicomflow-data"), description="Where the embedded back ends and the spool keep data."
    )
    ae_title: str = Field("DICOMFLOW", description="AE title of the DICOM SCP.")
    dicom_host: str = Field("0.0.0.0", description="Address the DICOM SCP listens on.")  # noqa: S104
    dicom_port: int = Field(11112, description="Port of the DICOM SCP.")
    dicom_max_pdu: int = Field(
        0, description="Maximum PDU size the SCP accepts (0 = unlimited, fastest)."
    )
    dicom_workers: int = Field(
        1, description="SCP worker processes sharing the port (SO_REUSEPORT); 0 = one per core."
    )
    dicom_max_associations: int = Field(
        32, description="Maximum concurrent associations per SCP worker."
    )
    dicom_find_max_results: int = Field(
        10_000,
        ge=1,
        description="Most matches one C-FIND returns; past it the SCP answers the first ones, "
        "then Refused: out of resources (0xA700).",
    )
    dicom_allowed_aes: str = Field(
        "",
        description="Calling AE titles that may associate at all: comma-separated AE, AE@ip or "
        "AE@network/bits ('*' = any AE title); empty = any (a warning is logged at start).",
    )
    dicom_store_aes: str = Field(
        "",
        description="Calling AE titles that may C-STORE (same syntax; empty = every allowed AE).",
    )
    dicom_find_aes: str = Field(
        "", description="Calling AE titles that may C-FIND (same syntax; empty = every allowed AE)."
    )
    dicom_retrieve_aes: str = Field(
        "",
        description="Calling AE titles that may C-MOVE and C-GET (same syntax; empty = every "
        "allowed AE).",
    )
    dicom_move_destinations: str = Field(
        "",
        description="Which destinations each calling AE may C-MOVE to, e.g. "
        "WS1=PACS2,VIEWER;WS2=*;*=ARCHIVE ('*' as calling AE: every other AE); empty = any "
        "registered destination.",
    )
    dicom_tls_port: int = Field(
        0, description="Port of the DICOM TLS listener (same services, TLS 1.2+); 0 = off."
    )
    dicom_tls_certificate: str = Field(
        "", description="PEM certificate (chain) of the DICOM TLS listener."
    )
    dicom_tls_key: str = Field("", description="PEM private key of the DICOM TLS listener.")
    dicom_tls_ca: str = Field(
        "",
        description="PEM CA certificates that client certificates must chain to; set = mutual "
        "TLS (a client without a valid certificate is refused), empty = no client certificate.",
    )
    query_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds an index query may take (C-FIND, C-MOVE/C-GET lookup, QIDO-RS, "
        "/api/search); past it: 0xA700 over DIMSE, HTTP 503 over HTTP.",
    )
    destinations: str = Field(
        "",
        description="C-MOVE destinations as a comma-separated list of AET@host:port (more in "
        "<data_dir>/destinations.json, edited through /api/admin/destinations).",
    )
    max_object_bytes: int = Field(
        2 * 1024**3, description="Largest object accepted by C-STORE, STOW-RS and import."
    )
    stow_max_request_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="Largest STOW-RS request body (all its parts); larger: HTTP 413 before the "
        "body is read (Content-Length) or as soon as a streamed body exceeds it.",
    )
    http_host: str = Field("0.0.0.0", description="Address the HTTP API listens on.")  # noqa: S104
    http_port: int = Field(8080, description="Port of the HTTP API (DICOMweb, search, UI).")
    log_level: str = Field("INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_json: bool = Field(False, description="Log as JSON lines instead of text.")

    bus: BusBackend = Field(BusBackend.EMBEDDED, description="Event bus: embedded or kafka.")
    index: IndexBackend = Field(
        IndexBackend.EMBEDDED, description="Search index: embedded or elasticsearch."
    )
    blobs: BlobBackend = Field(BlobBackend.FILESYSTEM, description="Blob store: filesystem or s3.")
    spool: BlobBackend = Field(
        BlobBackend.FILESYSTEM,
        description="Spool of received objects: filesystem (local disk under DICOMFLOW_DATA_DIR, "
        "shared with the storage processor) or s3 (the blob store's spool bucket, for processors "
        "on other hosts).",
    )

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_partitions: int = Field(6, description="Partitions of each topic dicomflow creates.")
    topic_prefix: str = Field("dicomflow", description="Prefix of every topic name.")
    elasticsearch_url: str = Field("http://127.0.0.1:9200", description="Elasticsearch URL.")
    elasticsearch_prefix: str = Field(
        "dicomflow", description="Prefix of the Elasticsearch index names."
    )
    s3_endpoint: str = Field("127.0.0.1:9000", description="S3 endpoint host:port.")
    s3_secure: bool = Field(False, description="Use HTTPS for S3.")
    s3_access_key: SecretStr = Field(SecretStr(""), description="S3 access key.")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    s3_bucket_prefix: str = Field("dicomflow", description="Prefix of the S3 bucket names.")

    deid_secret: SecretStr = Field(
        SecretStr(PLACEHOLDER_SECRET),
        description="Key of the keyed hash that makes pseudonymous UIDs and IDs. Keep it secret. "
        "The embedded deployment generates one on first start (`<data_dir>/secrets/deid-secret`); "
        "a scale-out deployment must set it.",
    )
    deid_uid_root: str = Field(
        "2.25", description="UID root of pseudonymous UIDs (2.25 = UUID-derived, no registration)."
    )
    deid_retain_longitudinal: bool = Field(
        False,
        description="Retain Longitudinal Temporal Information (keep dates instead of shifting).",
    )
    deid_retain_patient_characteristics: bool = Field(
        False, description="Retain Patient Characteristics (sex, age, size, weight)."
    )
    deid_retain_device_identity: bool = Field(
        False, description="Retain Device Identity (station name, serial numbers)."
    )

    audit_max_scan: int = Field(
        200_000,
        ge=1,
        description="Most audit records one audit search reads back from the end of the audit "
        "topic (older ones are for the system the topic is exported to).",
    )
    http_auth: bool = Field(
        True,
        description="Require authentication on every HTTP route but /healthz. false opens the "
        "API to anyone and is refused unless DICOMFLOW_DEV_MODE=true.",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="An API token with the admin role, for automation "
        "(Authorization: Bearer <token>); unset, `dicomflow serve` creates one on first start.",
    )
    http_session_hours: float = Field(
        8.0, gt=0, description="Lifetime of a web UI login session (hours)."
    )
    oidc_issuer: str = Field(
        "",
        description="OpenID Connect issuer URL whose bearer tokens (JWT) are accepted; empty "
        "= OIDC off.",
    )
    oidc_audience: str = Field(
        "", description="Audience (aud) that OIDC tokens must carry, e.g. the client id."
    )
    oidc_jwks_url: str = Field(
        "",
        description="JWKS URL of the issuer (empty = from "
        "<issuer>/.well-known/openid-configuration).",
    )
    oidc_roles_claim: str = Field(
        "roles",
        description="Claim holding the user's roles; a dotted path reaches into objects "
        "(realm_access.roles).",
    )
    oidc_role_map: str = Field(
        "",
        description="Comma-separated claim-value=role pairs (role: deid-reader, phi-reader, "
        "uploader, admin); empty = claim values are dicomflow role names.",
    )
    oidc_user_claim: str = Field(
        "preferred_username",
        description="Claim naming the user in the audit trail (falls back to sub).",
    )

    processors: str = Field(
        "", description="Comma-separated allowlist of processors to run (empty = all installed)."
    )
    search_processors: str = Field(
        "storage;index;metadata",
        description="The processes of the search path (from an acknowledgement to a search "
        "hit) that `dicomflow serve` runs at normal CPU priority: processor names, commas "
        "within a process, semicolons between processes. The others (de-identification, "
        "plugins) run in one more process at the lower priority DICOMFLOW_BACKGROUND_NICE, so "
        "a burst is searchable first. Empty: one process for all.",
    )
    background_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="Niceness added to the process of the processors that are not on the "
        "search path (DICOMFLOW_SEARCH_PROCESSORS).",
    )
    processor_linger_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="How long a processor waits for more records when a poll returns fewer "
        "than its batch: fewer, larger batches (each has a fixed cost: an event log commit, a "
        "sync) for at most this much more latency per hop (three hops from an "
        "acknowledgement to a search hit). 0: a batch is what one poll returns.",
    )
    background_defer_seconds: float = Field(
        30.0,
        ge=0,
        description="At most how long the processors that are not on the search path "
        "(DICOMFLOW_SEARCH_PROCESSORS) hold back while this machine's receivers take objects "
        "in (C-STORE, STOW-RS, import): a burst gets the cores, and they catch up once it "
        "has been quiet for half a second, or once their oldest event is this many seconds "
        "old. 0: they never hold back.",
    )
    ingest_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness added to the DICOM receiver processes of `dicomflow serve`. "
        "Above 0, the search path gets the larger share of a busy machine's CPU: objects "
        "are searchable sooner after their acknowledgement, and acknowledgements come "
        "slower while the machine is saturated.",
    )
    plugins: str = Field(
        "",
        description="Comma-separated allowlist of third-party plugin entry points to load "
        "(empty = all installed, '-' = none).",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae_title_is_valid(cls, value: str) -> str:
        stripped = value.strip()
        if not 0 < len(stripped) <= 16 or "\\" in stripped or not stripped.isprintable():
            raise ValueError("AE title must be 1-16 printable characters without backslash")
        return stripped

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = _config_file()
        if config is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
        return tuple(sources)

    def check_secrets(self) -> None:
        """Refuse to run outside dev mode while a secret still holds its placeholder.

        The embedded deployment generates its de-identification key on first start
        (kernel/secrets.py); a scale-out one must be given one, shared by every replica.
        """
        if self.dev_mode:
            return
        if self.bus is not BusBackend.EMBEDDED and self.deid_secret.get_secret_value() in (
            "",
            PLACEHOLDER_SECRET,
        ):
            raise ValueError(
                "DICOMFLOW_DEID_SECRET still holds its placeholder: a scale-out deployment needs "
                "one long random value shared by every process (or DICOMFLOW_DEV_MODE=true for "
                "a test setup)"
            )
        uses_s3 = BlobBackend.S3 in (self.blobs, self.spool)
        if uses_s3 and not self.s3_secret_key.get_secret_value():
            raise ValueError(
                "DICOMFLOW_S3_SECRET_KEY is empty while S3 is configured: set the S3 credentials "
                "(or DICOMFLOW_DEV_MODE=true for a test setup)"
            )

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"


@lru_cache(maxsize=1)
def get_settings(**overrides: Any) -> Settings:
    """The process-wide settings, built on first use (never at import time)."""
    return Settings(**overrides)

"""FastAPI dependencies: the back ends opened once per app, handed to routes by type."""

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from dicomflow.indexer.base import StudyIndex
from dicomflow.ingest.receiver import DurableReceiver, open_receiver
from dicomflow.kernel.audit import AuditTrail
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.bus.base import EventBus
from dicomflow.kernel.settings import Settings


@dataclass
class AppState:
    settings: Settings
    index: StudyIndex
    blobs: BlobStore
    bus: EventBus
    audit: AuditTrail
    _receiver: DurableReceiver | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def receiver(self) -> DurableReceiver:
        """The durable receive path for STOW-RS, opened on first use."""
        with self._lock:
            if self._receiver is None:
                self._receiver = open_receiver(self.settings, self.bus)
            return self._receiver


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.dicomflow
    return state


def get_settings_dep(state: "StateDep") -> Settings:
    return state.settings


def get_index(state: "StateDep") -> StudyIndex:
    return state.index


def get_blobs(state: "StateDep") -> BlobStore:
    return state.blobs


def get_bus(state: "StateDep") -> EventBus:
    return state.bus


def get_audit(state: "StateDep") -> AuditTrail:
    return state.audit


StateDep = Annotated[AppState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
IndexDep = Annotated[StudyIndex, Depends(get_index)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
BusDep = Annotated[EventBus, Depends(get_bus)]
AuditDep = Annotated[AuditTrail, Depends(get_audit)]

"""Long-lived helpers of one API process: the dashboard's event-log follower and caches, the
reindexer, the list of installed processors. Made on first use, stopped with the app.
"""

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from dicomflow.api.deps import AppState
from dicomflow.api.reindex import Reindexer
from dicomflow.api.ui.stats import DashboardState
from dicomflow.processors.plugins import plugin_manager, processor_classes, select
from dicomflow.processors.runtime import group_name

_ATTRIBUTE = "dicomflow_services"
_LOCK = threading.Lock()


@dataclass(frozen=True)
class InstalledProcessor:
    """A processor plugin as the status pages show it."""

    name: str
    description: str
    topics: tuple[str, ...]
    group: str
    enabled: bool


class Services:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.dashboard = DashboardState(state.bus)
        self.reindexer = Reindexer(
            state.bus, state.index, on_done=self.dashboard.index_figures.clear
        )
        self._processors: list[InstalledProcessor] | None = None
        self._enabled: list[InstalledProcessor] = []

    def processors(self) -> list[InstalledProcessor]:
        """Every installed processor, enabled or not by DICOMFLOW_PROCESSORS (loaded once:
        loading the plugins scans every installed distribution's entry points)."""
        if self._processors is None:
            settings = self.state.settings
            bus = self.state.bus
            installed = processor_classes(plugin_manager(settings.plugins))
            enabled = select(installed, settings.processors)
            self._processors = [
                InstalledProcessor(
                    name=name,
                    description=cls.description or (cls.__doc__ or "").strip().split("\n")[0],
                    topics=tuple(bus.topic(str(t)) for t in cls.topics),
                    group=group_name(settings.topic_prefix, name),
                    enabled=name in enabled,
                )
                for name, cls in installed.items()
            ]
            by_name = {processor.name: processor for processor in self._processors}
            self._enabled = [by_name[name] for name in enabled]
        return self._processors

    def enabled_processors(self) -> list[InstalledProcessor]:
        """The processors DICOMFLOW_PROCESSORS selects, in its order (loaded once)."""
        self.processors()
        return self._enabled

    def close(self) -> None:
        self.reindexer.stop()
        self.dashboard.close()


def services_of(app: FastAPI) -> Services:
    with _LOCK:
        services: Services | None = getattr(app.state, _ATTRIBUTE, None)
        if services is None:
            services = Services(app.state.dicomflow)
            setattr(app.state, _ATTRIBUTE, services)
        return services


def get_services(request: Request) -> Services:
    return services_of(request.app)


@asynccontextmanager
async def services_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Stops the background threads (if any were started) before the back ends close."""
    yield
    services: Services | None = getattr(app.state, _ATTRIBUTE, None)
    if services is not None:
        services.close()


ServicesDep = Annotated[Services, Depends(get_services)]

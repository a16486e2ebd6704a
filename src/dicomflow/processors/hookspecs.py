"""Hook specifications of dicomflow plugins (pluggy), in the style of datasette.

A plugin is a module (or object) with functions marked ``@hookimpl`` and named like the specs
below, published under the ``dicomflow.processors`` entry-point group::

    [project.entry-points."dicomflow.processors"]
    my_router = "my_package.my_module"

The built-in processors register through the very same hooks and entry points.
"""

import pluggy

from dicomflow.processors.base import Processor

PROJECT_NAME = "dicomflow"
ENTRY_POINT_GROUP = "dicomflow.processors"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_processors() -> list[type[Processor]]:  # type: ignore[empty-body]
    """Return the Processor classes this plugin provides.

    Each class has a unique `name` (also its consumer group) and the logical `topics` it
    consumes; the runtime instantiates it with a ProcessorContext.
    """

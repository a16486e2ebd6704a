"""The web UI: server-rendered Jinja2 templates with htmx, served by the API at ``/``.

The routes are in `dicomflow.api.routes.ui`; this package holds what they compute (the search
form and its grouping, the tag dump, the dashboard's figures and charts) and, as package data,
the templates (``templates/``) and the static files (``static/``, htmx vendored). docs/ui.md
says why this technology and what each page does.
"""

from pathlib import Path

UI_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"

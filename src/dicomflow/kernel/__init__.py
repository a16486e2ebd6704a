"""The shared kernel: event schema, event bus, blob store, identifiers and settings.

Every other package imports from here; this package imports none of them.
"""

"""Consumers of the event stream. Each processor is a plugin with its own consumer group."""

"""Fuzz targets: each module's ``build_<name>(workdir)`` returns the one-input function of a
target, and ``seeds_<name>()`` its seed inputs (see `fuzz.registry`)."""

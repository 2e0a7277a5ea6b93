"""Example plug-in package for the SURF benchmark (see its pyproject.toml)."""

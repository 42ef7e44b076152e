"""YAML retention policies: the schema, and pure decisions (timeline + policy + now -> actions)."""

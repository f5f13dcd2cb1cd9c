"""Config helpers shared by the Snakefile and tests."""

from __future__ import annotations


def describe_validation_error(err) -> str:
    """One line for a jsonschema ValidationError: the config key path and what is wrong."""
    path = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        where = f"{path}." if err.absolute_path else ""
        return f"config key {where}{extra[0]}: unknown key; allowed here: {allowed}"
    return f"config key {path}: {err.message}"

"""Glue between Snakemake and the library: config validation messages, schema defaults, and
``run_logged`` for workflow_scripts (logging to the rule's log, one-line errors, no partial
outputs)."""

from __future__ import annotations

import copy
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import field
from functools import cache
from pathlib import Path

import yaml

from circuitflow import devices, store, tracking

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def describe_validation_error(err) -> str:
    """One line for a jsonschema ValidationError: the config key path and what is wrong."""
    path = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        where = f"{path}." if err.absolute_path else ""
        return f"config key {where}{extra[0]}: unknown key; allowed here: {allowed}"
    return f"config key {path}: {err.message}"


@cache
def config_schema() -> dict:
    """The workflow's config schema (``schemas/config.schema.yaml``), the home of every default."""
    return yaml.safe_load(SCHEMA.read_text())


def schema_defaults(*section: str) -> dict:
    """``{key: default}`` of a config section, e.g. ``schema_defaults("patching")`` or
    ``schema_defaults("vision", "patching")``: what a dataclass built from config falls back on.
    ``"*"`` steps into the entries of a mapping section: ``("datasets", "*", "captions")``."""
    node = config_schema()
    for key in section:
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return {k: v["default"] for k, v in node.get("properties", {}).items() if "default" in v}


def run_logged(smk, main: Callable) -> None:
    """Run ``main(smk)`` with stdout/stderr in ``smk.log[0]``.

    Inputs whose manifest does not verify are refused first. A job with ``resources: gpu``
    or ``params.device: cuda`` runs holding its own GPU(s) from :mod:`circuitflow.devices`
    (CUDA_VISIBLE_DEVICES set before torch starts), and each output's manifest records the
    device used; an output whose script wrote no manifest gets one (kind = the rule). On
    failure: delete every output (so no later run trusts half an artifact),
    keep the traceback in the log and print one line naming the rule and the problem.
    """
    log = Path(smk.log[0])
    log.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    threads = int(getattr(smk, "threads", 1) or 1)
    requested = getattr(getattr(smk, "params", None), "device", None)
    gpu = getattr(getattr(smk, "resources", None), "gpu", 0)
    with open(log, "w") as fh, redirect_stderr(fh), redirect_stdout(fh):
        try:
            wanted = devices.gpus_wanted(gpu, requested)
            with devices.leased(wanted, requested) as lease:
                import torch

                torch.set_num_threads(threads)
                store.verify_inputs(smk.input)
                for out in smk.output:
                    store.remove_stale_manifest(out)
                started = time.perf_counter()
                main(smk)
                for out in smk.output:
                    if not store.claimed(out):
                        store.write_manifest(
                            out,
                            kind=smk.rule,
                            inputs=store.keyable_inputs(smk.input),
                            params=dict(smk.wildcards.items()) if hasattr(smk, "wildcards") else {},
                        )
                if requested is not None or wanted:
                    for out in smk.output:
                        if store.has_manifest(out):
                            store.update_manifest(out, device=lease.record())
            tracking.track(
                smk,
                seconds=time.perf_counter() - started,
                warn=lambda line: (print(line), terminal.write(line + "\n")),
            )
        except Exception as err:  # noqa: BLE001 - every failure must clean up
            traceback.print_exc(file=fh)
            for out in smk.output:
                store.remove_partial(out)
                store.remove_stale_manifest(out)
            terminal.write(f"circuitflow [{smk.rule}]: {err} (log: {log})\n")
            fh.flush()
            os._exit(1)


def _frozen(value):
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def schema_backed(*section: str, prefix: str = ""):
    """Class decorator (apply below ``@dataclass``): the defaults of the fields that mirror
    config keys of ``section`` (named ``prefix + field``, else ``field``) are the schema's,
    so a dataclass built from config has no defaults of its own. Lists become tuples;
    mappings are copied per instance."""
    defaults = schema_defaults(*section)

    def wrap(cls):
        for name in cls.__dict__.get("__annotations__", {}):
            key = prefix + name if prefix + name in defaults else name
            if key not in defaults:
                continue
            value = defaults[key]
            if isinstance(value, dict):
                setattr(cls, name, field(default_factory=lambda v=value: copy.deepcopy(v)))
            else:
                setattr(cls, name, _frozen(value))
        return cls

    return wrap

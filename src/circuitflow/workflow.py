"""Glue for workflow_scripts: logging to the rule's log, one-line errors, no partial outputs."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from circuitflow import store


def run_logged(smk, main: Callable) -> None:
    """Run ``main(smk)`` with stdout/stderr in ``smk.log[0]``.

    On failure: delete every output (so no later run trusts half an artifact), keep the
    traceback in the log and print one line naming the rule and the problem.
    """
    log = Path(smk.log[0])
    log.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    threads = int(getattr(smk, "threads", 1) or 1)
    with open(log, "w") as fh, redirect_stderr(fh), redirect_stdout(fh):
        try:
            import torch

            torch.set_num_threads(threads)
            main(smk)
        except Exception as err:  # noqa: BLE001 - every failure must clean up
            traceback.print_exc(file=fh)
            for out in smk.output:
                store.remove_partial(out)
            terminal.write(f"circuitflow [{smk.rule}]: {err} (log: {log})\n")
            fh.flush()
            os._exit(1)

"""One base for every error a user can act on.

Each message is one line: it names the file, config key or model, the bad value, and what to
do. Phase errors derive from :class:`CircuitflowError` (and from the builtin kind they are,
so ``except ValueError`` keeps working); workflow scripts catch the base and print the line.
"""

from __future__ import annotations


class CircuitflowError(Exception):
    """Bad input or config: a one-line message naming the file, key or model and the fix."""


class ConfigError(CircuitflowError, ValueError):
    """A config key has a value the code cannot use (the message names the key)."""


class TokenizationError(CircuitflowError, RuntimeError):
    """A prompt cannot be tokenized as configured (the message names the sample)."""


class HookError(CircuitflowError, RuntimeError):
    """A hook point is missing or never fired (the message names the model and the hook)."""


def yaml_error(path, err) -> str:
    """One line for a YAML parse error of ``path``: file, line and column, what is wrong.

    A TAB where indentation is expected is named as such (PyYAML's own text, "found
    character '\\t' that cannot start any token", does not say what to do).
    """
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "'\\t'" in problem and mark is not None:
        return (
            f"{where}: a TAB character (column {mark.column + 1}); YAML indents with spaces "
            "only: replace the TAB with spaces"
        )
    column = f":{mark.column + 1}" if mark is not None else ""
    return f"{where}{column}: not valid YAML ({problem}); fix that line"


def check_yaml_file(path) -> None:
    """Raise :class:`ConfigError` with :func:`yaml_error`'s line if ``path`` is not valid YAML
    (a missing file is left to the caller, which names it)."""
    from pathlib import Path

    import yaml

    if not Path(path).is_file():
        return
    with open(path, encoding="utf-8") as fh:
        try:
            yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(yaml_error(path, err)) from None


def logged_error(log_text: str) -> str | None:
    """The message of the exception a job log's traceback ends with (the line
    ``circuitflow.workflow.run_logged`` printed), or None if the log ends without one."""
    lines = log_text.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return None
    tail = lines[starts[-1] + 1 :]
    frames = [i for i, line in enumerate(tail) if line[:1].isspace()]
    exc = tail[frames[-1] + 1 :] if frames else tail
    if not exc:
        return None
    name, sep, message = exc[0].partition(": ")
    if not sep or not name.replace(".", "").replace("_", "").isalnum():
        return " ".join(exc).strip()
    return " ".join([message, *exc[1:]]).strip() or name


def failed_job_logs(snakemake_log_text: str) -> list[tuple[str, list[str]]]:
    """``[(rule, [job log, ...])]`` of every "Error in rule" block of a Snakemake log."""
    out: list[tuple[str, list[str]]] = []
    block = False
    for line in snakemake_log_text.splitlines():
        if line.startswith("Error in rule ") and line.endswith(":"):
            out.append((line.removeprefix("Error in rule ")[:-1], []))
            block = True
        elif not line[:1].isspace():
            block = False
        elif block and line.strip().startswith("log: "):
            logs = line.strip().removeprefix("log: ").split(" (check log")[0]
            out[-1][1].extend(p.strip() for p in logs.split(",") if p.strip())
    return out

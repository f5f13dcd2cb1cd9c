"""The one hook layer: attach forward hooks once per run, run passes that may stop early.

Two kinds of model expose hook points by name:
- a TransformerLens bridge (``bridge.hooks(fwd_hooks=...)``, names like
  ``blocks.8.hook_resid_pre``);
- a torch module tree whose named submodules are the hook points (vision encoders, VLMs),
  each hook seeing the module's output.

A hook function takes the hook point's output and returns a replacement or ``None``; it
raises :class:`StopForward` when nothing later in the pass is needed. :class:`HookRunner`
holds the functions for a whole run (entering ``bridge.hooks`` costs ~0.4 s, more than the
forward pass of a small batch) and runs passes with them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from circuitflow.core.errors import HookError

HookFn = Callable[[Any], Any]
FwdHook = tuple[str, HookFn]


class StopForward(Exception):
    """Raised by a hook once the pass has produced everything the caller reads."""


def run_to_stop(forward: Callable, *args, grad: bool = False, **kwargs):
    """``forward(*args, **kwargs)`` under ``torch.no_grad`` (``grad``: with autograd, for
    gradients of what the hooks captured); ``None`` when a hook stopped it."""
    with torch.enable_grad() if grad else torch.no_grad():
        try:
            return forward(*args, **kwargs)
        except StopForward:
            return None


def main_output(out):
    """The tensor of a module output that may be a tuple or list (hidden states first)."""
    return out[0] if isinstance(out, tuple | list) else out


def replace_main(out, new):
    """``out`` with its main tensor replaced by ``new`` (same container type)."""
    if isinstance(out, tuple):
        return (new, *out[1:])
    if isinstance(out, list):
        return [new, *out[1:]]
    return new


@contextlib.contextmanager
def attach_bridge(bridge, fwd_hooks: Sequence[FwdHook], prepend: bool = False) -> Iterator:
    """Attach ``fwd_hooks`` to a TransformerLens bridge by hook name."""
    del prepend  # the bridge runs hooks in the order given
    wrapped = [(name, lambda x, hook, fn=fn: fn(x)) for name, fn in fwd_hooks]
    with bridge.hooks(fwd_hooks=wrapped):
        yield


@contextlib.contextmanager
def attach_modules(
    modules: Mapping[str, torch.nn.Module], fwd_hooks: Sequence[FwdHook], prepend: bool = False
) -> Iterator:
    """Attach ``fwd_hooks`` as forward hooks on the named modules.

    ``prepend``: run before hooks the model registered itself (transformers records hidden
    states with forward hooks; a VLM reads its vision features from them), so edits reach them.
    """
    handles = []
    try:
        for name, fn in fwd_hooks:
            if name not in modules:
                raise HookError(f"no hook point {name!r}; it has {', '.join(list(modules)[:4])}...")
            handles.append(
                modules[name].register_forward_hook(
                    lambda module, args, out, fn=fn: fn(out), prepend=prepend
                )
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


class HookRunner:
    """Hook functions attached once for a whole run; each pass runs with them.

    ``attach(fwd_hooks, prepend)`` is the model's attach function (:func:`attach_bridge` or
    :func:`attach_modules` bound to the model). Use as ``with runner: runner.run(...)``.
    """

    def __init__(
        self,
        attach: Callable[[Sequence[FwdHook], bool], contextlib.AbstractContextManager],
        fwd_hooks: Sequence[FwdHook] = (),
        prepend: bool = False,
    ):
        self.attach, self.fwd_hooks, self.prepend = attach, list(fwd_hooks), prepend
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> HookRunner:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.attach(self.fwd_hooks, self.prepend))
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @staticmethod
    def run(forward: Callable, *args, **kwargs):
        """One pass: ``forward(*args, **kwargs)``, ``None`` when a hook stopped it."""
        return run_to_stop(forward, *args, **kwargs)

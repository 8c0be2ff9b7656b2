"""Weight versions: how a rollout engine knows by itself that the training weights changed.

An engine that samples from weights of its own (the torch engine's bf16 copy, a vLLM server)
refreshes them when ``weights_signature(model)`` moves: the sum of the parameters' in-place version
counters and of their storage addresses. PyTorch advances a tensor's version counter on every
in-place write it dispatches (``load_state_dict``, ``p.add_(...)`` under ``no_grad``, the for-loop and
foreach optimizers); a new storage (``model.to(...)``, ``p.data = t``) moves the address.

Fused optimizer kernels (``torch.optim.AdamW(fused=True)``, this library's default optimizer) write
through raw pointers and advance no counter. So importing this module registers one global
optimizer step post-hook: after any ``torch.optim.Optimizer`` steps, the counters of every parameter
it holds advance (``torch.autograd.graph.increment_version``, PyTorch's documented remedy for kernels
it cannot see). This covers our ``Stepper``, a plain ``optimizer.step()`` in a user's own loop, a
LoRA adapter's parameters and any ``Optimizer`` subclass (steps skipped by ``GradScaler`` or by
``Stepper`` advance nothing). A side effect, the same as with foreach AdamW: autograd now refuses a
backward pass through a graph that saved weights a later step changed (it used to compute a
gradient from the changed weights silently).

Not seen, so call ``posttrain.rollout.sync_weights(model)`` after them: writes through
``param.data`` (which has a version counter of its own), an optimizer that does not subclass
``torch.optim.Optimizer``, and weights written by another process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


def weights_signature(model: nn.Module) -> tuple[int, int]:
    """Moves whenever a parameter of ``model`` is written in place, stepped by an optimizer or replaced.

    One walk over the parameters, host-side metadata only (no device sync), once per ``generate``
    call: 0.6 ms of CPU time for SmolLM2-135M's 272 parameter tensors, 2e-4 of its smallest timed
    generate call (benchmarks/weights_version.py).
    """
    version = address = 0
    for param in model.parameters():
        version += param._version
        address += param.data_ptr()
    return version, address


def _advance_versions(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Global step post-hook: mark every parameter the optimizer holds as written in place."""
    torch.autograd.graph.increment_version([p for group in optimizer.param_groups for p in group["params"]])


register_optimizer_step_post_hook(_advance_versions)

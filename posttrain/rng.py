"""RNG states a checkpoint holds: python, numpy, torch CPU and CUDA, and a recipe's named generators,
as tensors / lists / numbers only (loadable with ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state(generators: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every global RNG state (python, numpy, torch CPU, CUDA) and the named generators.

    ``generators`` holds ``torch.Generator`` or ``random.Random`` objects (a data sampler, the
    rollout sampler). The result contains only tensors, lists, numbers and strings, so it
    round-trips through ``torch.load(weights_only=True)``.
    """
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        # An uninitialised CUDA has drawn nothing yet: capturing would only create a context.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {},
    }
    for name, generator in (generators or {}).items():
        if isinstance(generator, torch.Generator):
            state["generators"][name] = {"kind": "torch", "state": generator.get_state()}
        elif isinstance(generator, random.Random):
            version, internal, gauss = generator.getstate()
            state["generators"][name] = {"kind": "random", "version": version,
                                         "internal": list(internal), "gauss": gauss}
        else:
            raise TypeError(f"generator {name!r} must be a torch.Generator or random.Random, "
                            f"got {type(generator).__name__}")
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, Any] | None = None) -> None:
    """Put back what ``capture_rng_state`` captured; ``generators`` are restored in place."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states:
        if not torch.cuda.is_available():
            warnings.warn("the checkpoint holds CUDA RNG states but no CUDA device is available: "
                          "GPU sampling after resume will differ from the original run", stacklevel=2)
        else:
            count = min(len(cuda_states), torch.cuda.device_count())
            for device in range(count):
                torch.cuda.set_rng_state(cuda_states[device], device)
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"no generator named {name!r} was saved (saved: {sorted(saved)})")
        entry = saved[name]
        if isinstance(generator, torch.Generator) and entry["kind"] == "torch":
            generator.set_state(entry["state"])
        elif isinstance(generator, random.Random) and entry["kind"] == "random":
            generator.setstate((entry["version"], tuple(entry["internal"]), entry["gauss"]))
        else:
            raise TypeError(f"generator {name!r} is a {type(generator).__name__} but a "
                            f"{entry['kind']} generator was saved")

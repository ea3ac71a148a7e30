"""Capture and restore every random number generator a training run may draw from.

torch (CPU, and every CUDA device when present), numpy's global generator and Python's
`random`. The captured form holds only tensors, ints, floats, strings, lists and dicts,
so it loads with torch.load(weights_only=True) and never needs pickled objects.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from charlm.errors import CharlmError


def capture(device: torch.device) -> dict[str, Any]:
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # this process's GPU only: touching the others would start a CUDA context on each
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else None,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "python": {"version": int(version), "state": list(python_state), "gauss_next": gauss_next},
    }


def restore(saved: dict[str, Any], device: torch.device) -> None:
    try:
        torch.set_rng_state(saved["torch"])
        if saved.get("cuda") is not None and device.type == "cuda":
            # one state, this process's GPU (older checkpoints kept every GPU's; the first was ours)
            torch.cuda.set_rng_state(saved["cuda"][0], device)
        numpy_state = saved.get("numpy")
        if numpy_state is not None:
            np.random.set_state(
                (
                    numpy_state["kind"],
                    numpy_state["keys"].numpy().astype(np.uint32),
                    numpy_state["position"],
                    numpy_state["has_gauss"],
                    numpy_state["cached_gauss"],
                )
            )
        python_state = saved.get("python")
        if python_state is not None:
            random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CharlmError(
            f"the saved random number generator state is damaged ({exc}); the checkpoint cannot be resumed"
        ) from None

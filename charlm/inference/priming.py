"""Reading prompts into a model's state before sampling, one prompt or many at once.

A long prompt goes through the fused kernel (nn.LSTM/GRU/RNN) a window at a time. A short one
is cheaper through the Stepper's hand-written cells: nn.LSTM has a fixed cost of a millisecond
or more per call on a CPU, which is several tokens' worth of steps. Short prompts arriving
together are read together, right-aligned: a prompt shorter than the longest starts late, its
state held at zero until its first token, so every row ends on its own last token and the
result is what each would give alone.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from charlm.inference.stepper import LayerState, Stepper

SHORT_PROMPT = 48  # tokens: at most this many are stepped, longer prompts take the fused kernel
PRIME_WINDOW = 4096  # prompt tokens per fused forward pass, so (1, P, V) logits are never held


@torch.inference_mode()
def prime_fused(
    stepper: Stepper, ids: list[int], on_window: Optional[Callable[[int, torch.Tensor], None]] = None
) -> tuple[torch.Tensor, LayerState]:
    """One prompt through the fused kernel -> its next-token logits (1, V) and its state.
    on_window(begin, logits (T, V)) sees each window's logits (for the prompt's logprobs)."""
    model = stepper.model
    device = model.embedding.weight.device
    prompt = torch.tensor([ids], dtype=torch.long, device=device)  # (1, P)
    state = None
    for begin in range(0, prompt.shape[1], PRIME_WINDOW):
        logits, state = model(prompt[:, begin : begin + PRIME_WINDOW], state)
        if on_window is not None:
            on_window(begin, logits[0].float())
        last = logits[:, -1, :].float()
        del logits
    return last, stepper.from_model_state(state)


@torch.inference_mode()
def prime_stepped(stepper: Stepper, prompts: list[list[int]]) -> tuple[torch.Tensor, LayerState]:
    """N short prompts stepped together, right-aligned -> logits (N, V) and the state."""
    model = stepper.model
    device = model.embedding.weight.device
    N, P = len(prompts), max(len(ids) for ids in prompts)
    tokens = torch.zeros(N, P, dtype=torch.long, device=device)
    starts = torch.tensor([[P - len(ids)] for ids in prompts], device=device)  # (N, 1)
    for i, ids in enumerate(prompts):
        tokens[i, P - len(ids) :] = torch.tensor(ids, dtype=torch.long)
    per_layer = 2 if stepper.cell == "lstm" else 1
    state = [torch.zeros(N, stepper.hidden, device=device) for _ in range(stepper.layers * per_layer)]
    late = int(starts.max())  # steps before which some row has not started
    for t in range(P):
        logits, stepped = stepper.step(tokens[:, t], state)
        if t < late:
            begun = starts <= t  # (N, 1)
            stepped = [torch.where(begun, new, old) for new, old in zip(stepped, state)]
        state = stepped
    return logits.float(), state

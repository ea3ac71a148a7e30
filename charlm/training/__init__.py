"""The training engine and what it relies on: optimizer and schedule, divergence guard, RNG capture,
torchrun collectives, fault injection. It knows nothing of what is trained (see charlm.tasks)."""

"""The training engine and what it relies on. It knows nothing of what is trained (see charlm.tasks).

task.py (the interface a task implements), loop.py, recovery.py and engine.py (the engine,
in three layers: loop control; bad steps, rollbacks and out of memory; model, optimizer,
steps, checkpoints and validation), state.py (the checkpointed TrainerState), checkpoint.py
(writing and reading it, events), optim.py, guard.py, rngstate.py, distributed.py, faults.py,
preflight.py and resume.py."""

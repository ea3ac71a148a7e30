"""The training engine and what it relies on. It knows nothing of what is trained (see charlm.tasks).

task.py (the interface a task implements), engine.py (the engine: it builds its parts and runs
the loop), position.py (where the run is, its clock and stop limits), steps.py (one step:
optimizer, scaler, guard), recovery.py (the steps' records read back: the log, bad steps,
rollbacks, out of memory), state.py (the checkpointed TrainerState), checkpoint.py (writing
and reading it, events), optim.py, guard.py, rngstate.py, distributed.py, faults.py,
preflight.py and resume.py."""

"""What is trained: each task supplies the engine its model, batches, loss, validation and extra checkpoint state."""

"""The run directory: config, tokenizer, weights, trainer state and metrics journal, read safely and written atomically."""

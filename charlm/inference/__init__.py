"""Using a trained model: generation (priming, the fast step, sampling, UTF-8 guard, stop strings) and scoring."""

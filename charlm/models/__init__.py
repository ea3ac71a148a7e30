"""Models: the recurrent language model, its recurrent-state helpers, parameter and memory estimates."""

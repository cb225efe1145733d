"""The OpenAI-shaped files + fine-tuning jobs service: a file store, a jobs store, and a
supervisor that runs each job's `tunesmith train` in its own process (never in the server's)."""

"""The OpenAI-shaped files + fine-tuning jobs service: a file store, a jobs store, and workers
(in the server, or `tunesmith jobs worker`) that run each job's `tunesmith train` in its own
process (never in the server's)."""

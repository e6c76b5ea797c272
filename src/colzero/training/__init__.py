"""Training: the phase schema, the trainer (one phase, DDP), recipes and their runs."""

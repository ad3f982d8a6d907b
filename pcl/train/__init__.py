"""Training stage (M-step and the loop): the engine, optimizers and schedules, mixed precision, meters, signals."""

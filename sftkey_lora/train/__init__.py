"""Training: the plan of a run, then loading, adapters, the loss and the Trainer of each
stage, and the merge between stages (read in that order: plan, loading, lora, loss,
callbacks, guards, stage, merge; `unsloth` is the optional backend)."""

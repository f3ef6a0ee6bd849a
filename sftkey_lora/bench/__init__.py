"""`sftkey-lora bench`: our stage 1 and stage 2 training steps against TRL's `SFTTrainer` and
a plain transformers `Trainer` (and unsloth on a GPU): `workload` is what they all train on,
`worker` one contender's timed steps in a process of its own, `contest` runs them all and
reports the ratios ours/theirs."""

"""L1: the one training loop (fine-tune, unlearn, relearn), its state, FSDP2 sharding, scoring, mixed
precision and the resource plan."""

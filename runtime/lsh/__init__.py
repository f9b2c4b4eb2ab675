"""LSH indexes of a layer's neurons (DWTA, SRP) and the schedule that keeps their tables fresh during training."""

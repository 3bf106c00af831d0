"""`make demo`: the offload run end to end on embedded defaults."""

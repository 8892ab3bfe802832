"""Core-sets: which labelled items to train the target on."""

"""Evaluations: the target model's test accuracy against the number of labels."""

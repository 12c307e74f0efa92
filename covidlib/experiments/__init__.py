"""Experiments of the book: one module per paper (profiles, configs, runners, figures)."""

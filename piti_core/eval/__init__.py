"""Evaluation: FID/KID, per-task alignment metrics and reports (see piti eval)."""

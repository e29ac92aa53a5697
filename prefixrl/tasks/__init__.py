"""Synthetic tasks with verifiable answers for CPU runs (`arith`: add/subtract chains with worked solutions)."""

"""The capacity benchmark's worker processes (bench/capacity.py runs them)."""

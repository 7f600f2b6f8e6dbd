"""Benchmark scoring exactly as each benchmark's official code does it (quirks included), one module per benchmark.

Used by the Task classes of `desta evaluate` (desta/evaluate/tasks/); each module names the repository and commit it
was matched against, and tests/unit/test_parity_*.py check it item by item on released outputs or on verdicts
recorded by running the official code.
"""

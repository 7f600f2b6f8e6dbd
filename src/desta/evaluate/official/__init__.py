"""Benchmarks scored exactly as their official evaluation code does (Speech-IFEval, VoiceBench), item by item.

Each module names the repository and commit it was matched against; tests/unit/test_parity_*.py hold the evidence.
"""

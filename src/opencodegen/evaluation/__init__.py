"""Benchmarks: HumanEval pass@k and MTPB, with resumable result files and reports."""

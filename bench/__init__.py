"""Benchmarks (`make bench-merge`, `make bench-8b`) and the real-tokenizer model builders they share with the tests.
Not part of the installed package: they run from a source checkout."""

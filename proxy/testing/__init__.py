"""Running kvproxy as a process (tests and benchmarks)."""

"""gsv_bench: CPU-vs-GPU and backend-vs-backend benchmarks (see issue: bench)."""

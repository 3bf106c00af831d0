"""`make bench`: benchmarks that write their figures to bench/results/ and docs/benchmarks.md."""

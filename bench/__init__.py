"""Mosaic's benchmarks: each module prints figures; none of them passes or fails."""

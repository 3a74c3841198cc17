"""Drivers: config → search space → Tuner → Parquet tables and reports."""

"""Thin command-line scripts: flags -> a batchlab config -> one library call."""

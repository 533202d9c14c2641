"""The logs service: per-job log streams and their end-of-log markers."""

"""The scheduler: matches queued jobs to workers and applies what agents report."""

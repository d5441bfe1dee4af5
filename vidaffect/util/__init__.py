"""Small helpers every layer uses: terminal output (progress bars, log format), the
compute device, runs of flagged frames."""

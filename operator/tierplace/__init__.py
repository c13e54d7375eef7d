"""tierplace: tiered device / edge / cloud early-exit inference, placed by a Kubernetes operator."""

__version__ = "0.1.0"

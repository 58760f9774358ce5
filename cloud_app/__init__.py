"""cloud_app (built in a later issue)."""

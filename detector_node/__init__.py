"""detector_node (built in a later issue)."""

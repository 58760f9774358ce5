"""`make demo`: the system on embedded defaults, on one machine."""

"""detector_node: an inspection station (one per camera on a production line).

Parts that need neither the bus nor a model runtime:

- ``camera_sim``: deterministic images of product surfaces per brand, good or defective;
- ``serial_protocol`` / ``serial_link``: the microcontroller line protocol and its port I/O;
- ``mcu_sim``: a microcontroller simulator on a pty pair (demo, benchmark, tests);
- ``history`` / ``history_server``: the image history on disk and its HTTP service for the edge;
- ``import_images``: ``python -m detector_node.import_images`` brings real labelled images in.
"""

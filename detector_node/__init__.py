"""detector_node: an inspection station (one per camera on a production line).

``python -m detector_node --config config/detector.yaml`` runs one (``node``, ``config``):

- ``inspection``: the loop (trigger -> capture -> model -> RES -> history);
- ``runtime``: LiteRT runner per brand, with load-time validation (never TensorFlow);
- ``hot_swap``: loading beside the running model, atomic swap, probation, rollback;
- ``model_store``: ``params/<brand>/`` files and the atomic active pointer;
- ``delivery``: the bus side of model delivery (manifest, chunks, statuses, rollback command).

Parts that need neither the bus nor a model runtime:

- ``camera_sim``: deterministic images of product surfaces per brand, good or defective;
- ``serial_protocol`` / ``serial_link``: the microcontroller line protocol and its port I/O;
- ``mcu_sim``: a microcontroller simulator on a pty pair (demo, benchmark, tests);
- ``history`` / ``history_server``: the image history on disk and its HTTP service for the edge;
- ``import_images``: ``python -m detector_node.import_images`` brings real labelled images in.
"""

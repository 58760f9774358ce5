"""The whole factory on one machine: ``python -m demo`` (``make demo``), ``python -m demo.scenario``
(``make scenario``), and ``demo.factory.Factory`` for tests and fault injection."""

"""The central cloud server: task queue and dispatch, bus listener, model registry with its gate, web app.

Back end: config, db, models (the data model), services (commands), queries (reads for the web
layer), tasks (huey), dispatch (sending and following tasks), listener + ingest + transfers (the
bus side), registry + evaluation (models), backend (all of it as one object). Web: cloud_app.web.
"""

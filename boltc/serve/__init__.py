"""`boltc serve`: saved models behind HTTP (Open Inference Protocol v2 and a plain /v1 predict route).

    models.py   load a .boltc beside the serving one, check it, describe its inputs
    rows.py     request bodies -> input rows, with 4xx errors naming field, row and what was expected
    answers.py  (ids, scores) -> the JSON answers of the predict routes
    batcher.py  dynamic batching: one inference thread, bounded wait, bounded queue
    metrics.py  Prometheus collectors
    app.py      the Starlette routes, auth, body limits
    server.py   uvicorn on a socket bound before the models are served; SIGTERM drains

Everything goes through the public Python API (`boltc.load`, `Model.predict`), so answers are the ones
`Model.predict` gives in process.
"""

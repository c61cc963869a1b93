"""The job queue that moves frames through obsdb (procrastinate on the catalog database).

Every arrow of the data flow is a job: ingest queues the next one, jobs are idempotent,
retried with back-off, and a job whose worker died is given to another worker. Any
number of workers on any number of machines share the database and the file store.
"""

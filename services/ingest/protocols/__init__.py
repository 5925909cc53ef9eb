"""The wire protocols: one sans-I/O adapter each.

An adapter turns its protocol's frames into the session core's inputs
(``services.ingest.core.inputs``) and the core's events into its own messages. It knows no
socket and no Redis; ``services.ingest.pipeline`` runs it.
"""

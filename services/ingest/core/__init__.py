"""The session core: sans-I/O, and it knows no wire protocol.

Audio, control inputs (``inputs``), results and the clock go in; segment jobs and protocol-free
events come out. ``channels.Channels`` is a session (one ``channel.SessionCore`` per audio
channel); ``ledger`` keeps results in segment order; ``eager`` is eager endpointing.
"""

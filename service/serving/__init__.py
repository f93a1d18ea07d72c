"""Running the model: the HTTP server and its edge guard, worker queues, batching, the engine,
and the multi-process supervisor.

The request path from the socket inwards: ``server`` (uvicorn protocol and its limits) →
``overload`` (admission at the edge) → ``batching`` (tier-ordered queues, batches) → ``engine``
(forward pass and modulation). ``workers`` runs N server processes on one socket.
"""

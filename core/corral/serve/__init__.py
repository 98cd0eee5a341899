"""The request path between a worker's sockets and the app, shared by every worker class.

Today it holds the retirement policy (:mod:`corral.serve.retirement`); the
rest of the path moves here as the serving layer is consolidated.
"""

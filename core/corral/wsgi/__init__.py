"""The WSGI layer (PEP 3333): environ, wsgi.input, start_response, serialisation.

No sockets here: a worker hands in a body source and a write function.
"""

"""The sans-io HTTP/1.1 layer: bytes in, request events or typed errors out."""

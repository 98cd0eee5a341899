"""A CPU-bound sync view for the WSGI pool, an async view (an upstream wait) for the ASGI pool."""

import asyncio
import hashlib
import os

from django.http import HttpRequest, JsonResponse
from django.urls import path


def report(request: HttpRequest) -> JsonResponse:
    # A sync view: on the gthread pool it runs in a worker thread; it also
    # works on the asgi pool, where Django runs it in a thread of its own.
    digest = hashlib.sha256(request.body or b"x").hexdigest()
    return JsonResponse({"view": "report", "digest": digest, "pid": os.getpid(),
                         "server": request.META.get("SERVER_SOFTWARE", "asgi")})


async def feed(request: HttpRequest) -> JsonResponse:
    # An async view: waiting on an upstream holds no thread on the asgi pool.
    await asyncio.sleep(float(request.GET.get("wait", "0.05")))
    return JsonResponse({"view": "feed", "pid": os.getpid()})


urlpatterns = [
    path("report", report),
    path("feed", feed),
]

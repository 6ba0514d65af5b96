"""Build step beyond pyproject.toml: the relay's C forwarder (rendezvous/channel_forward.c).

Optional: without a C compiler the package still installs, and the relay forwards live
channels in Python (same rules, about half the rate; callpeer-rendezvous says so at start).
"""

from setuptools import Extension
from setuptools import setup

setup(
    ext_modules=[
        Extension(
            "rendezvous._channel_forward",
            sources=["rendezvous/channel_forward.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)

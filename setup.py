"""The one compiled part: libjpeg-turbo window decoding (vggcli/data/_jpeg_window.c), built
against Debian's libjpeg-dev (which `just setup` installs with FFCV's packages)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vggcli.data._jpeg_window",
            sources=["vggcli/data/_jpeg_window.c"],
            libraries=["jpeg"],
            extra_compile_args=["-O2"],
        )
    ]
)

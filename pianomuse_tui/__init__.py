"""PianoMuse's face: the typer CLI (headless commands) and the Textual app."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pianomuse")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

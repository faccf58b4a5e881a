"""digitd: recognise handwritten digits in PNG files dropped into a folder."""

__version__ = "0.1.0"

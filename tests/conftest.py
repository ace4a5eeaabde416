"""Suite-wide settings: nothing a test does is written into the working directory."""

from hypothesis import settings

settings.register_profile("suite", database=None, deadline=None)
settings.load_profile("suite")

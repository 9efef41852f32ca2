"""The HTTP agent API (`orfeas serve`, contract section 7): `create_app` builds the ASGI app."""

from orfeas_pipelines.api.app import ApiSettings, create_app

__all__ = ["ApiSettings", "create_app"]

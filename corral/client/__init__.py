"""Python client of the Corral master's API (``CorralClient``)."""

from corral.client.client import FINAL_STATUSES, CorralClient, job_error
from corral.common.errors import error_from_result

__all__ = ["FINAL_STATUSES", "CorralClient", "error_from_result", "job_error"]

"""Python client of the Corral master's API (``CorralClient``)."""

from corral.client.client import FINAL_STATUSES, CorralClient, error_from_result, job_error

__all__ = ["FINAL_STATUSES", "CorralClient", "error_from_result", "job_error"]

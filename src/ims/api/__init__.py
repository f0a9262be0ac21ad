"""HTTP only: routers per resource, v2 and v3, problem+json errors. No SQL, no boto3."""

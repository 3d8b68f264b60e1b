"""The version of kamengd, in a module of its own: packaging (setup.cfg), the CLI,
/healthz, webhooks and backup archives read it without importing anything else."""
__version__ = "0.1.0"

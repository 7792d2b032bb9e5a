"""Face code shared by the lip-sync pipelines: S3FD detection and box post-processing."""

"""Common core shared by every stage: errors, settings, safe paths. Imports no stage package."""

"""The feature cache on disk and the fingerprints that key it."""

"""Tests of the caller legs (bridges/)."""

"""Tests of the Twilio bridge (bridges/twilio; protocols.md §E)."""

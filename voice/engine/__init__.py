"""The local Realtime engine."""

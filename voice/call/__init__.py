"""Per-call records and logic: transcript, cost meter, recorder (and later the call session core)."""

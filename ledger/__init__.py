"""Token Ledger: the domain model and the application service, the only code that writes events."""
